"""What a benchmark returns, and small helpers shared by the benchmark modules."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    """One comparison: ours against the plain-MLflow baseline measured in the same run."""

    benchmark: str  # what was measured, e.g. "1,000 steps x 2 metrics, SQLite"
    ours: float  # seconds (or the unit below)
    baseline: float
    target: str  # the goal in words, e.g. ">= 20x faster"
    passed: bool
    unit: str = "s"
    detail: str = ""  # how it was measured, and anything a reader should know

    @property
    def ratio(self) -> float:
        """How many times better ours is (baseline / ours)."""
        return self.baseline / self.ours if self.ours else float("inf")


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@contextmanager
def temp_store() -> Iterator[str]:
    """A fresh embedded store in a temporary folder, set as MLFLOW_TRACKING_URI."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="wb-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
