"""Buffered step metrics, and the metric names the workbench logs.

``StepLogger`` buffers per-step metrics and writes them with ``log_batch`` (at most 1,000
metrics a call): a 1,000-step curve costs one or two requests instead of a thousand.
"""

from __future__ import annotations

import atexit
import math
import time
import weakref

MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call

# Canonical metric names, and the spellings people (and the article) use for them.
CANONICAL_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss")
_ALIASES = {
    "acc": "accuracy",
    "f1_score": "f1",
    "auc": "roc_auc",
    "auc_roc": "roc_auc",
    "rocauc": "roc_auc",
    "average_precision": "pr_auc",
    "auc_pr": "pr_auc",
    "logloss": "log_loss",
    "cross_entropy": "log_loss",
}


def canonical_metric(name: str) -> str:
    """Map a metric spelling to the workbench's canonical name, keeping any prefix:
    ``val_auc_roc`` -> ``val_roc_auc``; unknown names come back unchanged."""
    for prefix in ("", "train_", "val_", "test_", "cv_"):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if rest in _ALIASES:
                return prefix + _ALIASES[rest]
    return name


_open_loggers: weakref.WeakSet[StepLogger] = weakref.WeakSet()


def flush_all() -> None:
    """Write what every open ``StepLogger`` holds (a run's end and exit call this)."""
    for logger in list(_open_loggers):
        logger.flush()


atexit.register(flush_all)


class StepLogger:
    """Buffer step metrics and write them with ``log_batch``, 1,000 at a time.

    Flushes when the buffer is full, on ``flush()``, on leaving a ``with`` block (also on
    error, so nothing logged before a crash is lost), when the run ends, and at exit.

    Example::

        with StepLogger() as steps:          # the active run, or StepLogger(run_id=...)
            for step, (tr, va) in enumerate(zip(train_acc, val_acc)):
                steps.log(step, train_accuracy=tr, val_accuracy=va)
    """

    def __init__(self, run_id: str | None = None, *, buffer_size: int = MAX_BATCH, client=None):
        import mlflow

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise RuntimeError("StepLogger needs a run: start one first or pass run_id=")
            run_id = active.info.run_id
        self.run_id = run_id
        self.buffer_size = max(1, min(buffer_size, MAX_BATCH))
        self._client = client or mlflow.MlflowClient()
        self._buffer: list = []
        self.logged = 0
        _open_loggers.add(self)

    def log(self, step: int, /, **metrics: float) -> None:
        """Record metric values at ``step``; non-finite values are skipped."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self._buffer.append(Metric(canonical_metric(key), value, ts, int(step)))
        if len(self._buffer) >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (in calls of at most 1,000 metrics)."""
        while self._buffer:
            chunk, self._buffer = self._buffer[: self.buffer_size], self._buffer[self.buffer_size :]
            self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            self.logged += len(chunk)

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        _open_loggers.discard(self)
