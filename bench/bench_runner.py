"""The runner against plain papermill, and a batch with two kernels against one.

1. Per-execution overhead: ``workbench run`` (validates parameters, creates and ends the run,
   writes the executed notebook, its HTML twin and the index, logs both as artifacts)
   against ``papermill in.ipynb out.ipynb`` on the same trivial notebook, both as the
   commands a user types (a fresh process each, wall time from start to exit), median of
   five alternating rounds. The store exists already (one untimed run creates its schema).
2. A batch of 8 short notebooks (each resumes the runner's run and logs metrics):
   ``workbench batch --jobs 2`` against ``--jobs 1`` on this two-core machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, temp_store

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "tests" / "runner" / "notebooks"
BIN = Path(sys.executable).parent


def _time_cmd(cmd: list[str], env: dict[str, str], cwd: Path, ok=(0,)) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return elapsed


def _overhead(tmp: Path, env: dict[str, str], rounds: int = 5) -> Result:
    nb = NOTEBOOKS / "plain.ipynb"
    ours, base = [], []
    _time_cmd([str(BIN / "workbench"), "run", str(nb)], env, tmp)  # store schema: once, untimed
    for _ in range(rounds):
        base.append(
            _time_cmd(
                [str(BIN / "papermill"), "--no-progress-bar", str(nb), str(tmp / "out.ipynb")],
                env,
                tmp,
            )
        )
        ours.append(_time_cmd([str(BIN / "workbench"), "run", str(nb)], env, tmp))
    o, b = statistics.median(ours), statistics.median(base)
    return Result(
        benchmark="one execution of a trivial notebook, command to exit",
        ours=o,
        baseline=b,
        target="no slower than plain papermill",
        passed=o <= b,
        detail=(
            f"`workbench run` vs `papermill in.ipynb out.ipynb`, median of {rounds} alternating "
            f"rounds (ours {', '.join(f'{x:.1f}' for x in ours)} s; papermill "
            f"{', '.join(f'{x:.1f}' for x in base)} s). Ours also checks the parameters, creates "
            "and ends the MLflow run, hands it to the kernel before the first cell, writes the "
            "HTML twin and the index and logs both reports as artifacts. The MLflow work runs in "
            "a store process forked at start-up (MLflow's import and the store's opening, ~2 s of "
            "CPU, overlap the kernel's start on the other core), the HTML exporter warms on a "
            "thread while the kernel starts, and a shut-down kernel is polled every 10 ms."
        ),
    )


def _batch(tmp: Path, env: dict[str, str]) -> Result:
    batch = tmp / "eight.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: bench-batch\n"
        "grid: {lr: [0.1, 0.2], depth: [1, 2, 3, 4]}\n"
    )
    one = _time_cmd([str(BIN / "workbench"), "batch", str(batch), "--jobs", "1"], env, tmp)
    two = _time_cmd([str(BIN / "workbench"), "batch", str(batch), "--jobs", "2"], env, tmp)
    return Result(
        benchmark="batch of 8 short notebooks, --jobs 2 vs --jobs 1",
        ours=two,
        baseline=one,
        target=">= 1.6x faster",
        passed=one / two >= 1.6,
        detail=(
            f"{os.cpu_count()} cores; each job starts its own kernel (its run is created on a "
            "thread meanwhile), resumes the runner's run and logs metrics; --jobs 1 runs in the "
            "command's process, --jobs 2 in a process pool forked after the heavy imports and "
            "before the store is opened."
        ),
    )


def run() -> list[Result]:
    with temp_store() as uri, tempfile.TemporaryDirectory(prefix="wb-bench-runner-") as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "WORKBENCH_PROJECT_DIR": tmp}
        return [_overhead(Path(tmp), env), _batch(Path(tmp), env)]
