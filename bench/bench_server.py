"""Team mode: the step-metric pattern against a real ``mlflow server``, and a batch of 8
against the server versus the embedded store.

The server runs on PostgreSQL when the PostgreSQL server binaries are on the machine (a
throwaway cluster started here, as in tests/team), else on SQLite; the Result says which.
Started with ``workbench.server.launch`` (2 uvicorn workers, proxied artifacts) on a free
loopback port, and stopped at the end.

1. 1,000 steps x 2 metrics: the article's per-step ``mlflow.log_metrics(..., step=s)``
   (one HTTP request a step) against ``workbench.tracking.StepLogger`` (``log_batch``, 1,000
   metrics a request), same server, same process, after one untimed warm-up of each.
2. ``workbench batch --jobs 4`` of 8 short notebooks (tests/runner/notebooks/tracked.ipynb)
   with MLFLOW_TRACKING_URI at the server against the same batch on the embedded SQLite store.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import Result, temp_store, timed

ROOT = Path(__file__).resolve().parents[1]
STEPS = 1000
NOTEBOOK = ROOT / "tests" / "runner" / "notebooks" / "tracked.ipynb"


def _pg_helpers():
    spec = importlib.util.spec_from_file_location("wb_team_pg", ROOT / "tests" / "team" / "pg.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("wb_team_pg", module)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _backend(tmp: Path):
    """A backend store URI (PostgreSQL if possible, else SQLite) and its name."""
    try:
        pg = _pg_helpers()
        cluster = pg.start_cluster()
    except Exception as exc:  # fall back to SQLite and say so
        print(f"   (PostgreSQL unavailable, using SQLite: {str(exc).splitlines()[0]})", flush=True)
        yield f"sqlite:///{tmp / 'server.db'}", "SQLite"
        return
    try:
        yield cluster.create_database("bench"), "PostgreSQL 15"
    finally:
        cluster.stop()


@contextmanager
def _server(tmp: Path):
    from workbench import server

    with _backend(tmp) as (uri, kind):
        state_file = tmp / ".workbench" / "server.json"
        t0 = time.perf_counter()
        state = server.launch(
            backend_store_uri=uri,
            artifacts_destination=str(tmp / "artifacts"),
            port=server.free_port(),
            state_file=state_file,
            workers=2,
        )
        startup = time.perf_counter() - t0
        try:
            yield state.url, kind, startup
        finally:
            server.shutdown(state_file)


@contextmanager
def _tracking_uri(uri: str):
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _steps(url: str, kind: str, startup: float) -> Result:
    import mlflow

    from workbench import tracking
    from workbench.core import store

    with _tracking_uri(url):
        exp = store.experiment_id("bench-server-steps")
        store.connect()

        def plain(n: int = STEPS):
            with mlflow.start_run(experiment_id=exp):
                for s in range(n):
                    mlflow.log_metrics({"train_accuracy": s / n, "val_accuracy": s / n / 2}, step=s)

        def ours():
            with mlflow.start_run(experiment_id=exp), tracking.StepLogger() as steps:
                for s in range(STEPS):
                    steps.log(s, train_accuracy=s / STEPS, val_accuracy=s / STEPS / 2)

        plain(20), ours()  # warm-up: connections, server workers
        baseline, mine = timed(plain), timed(ours, repeat=3)
    return Result(
        f"{STEPS:,} steps x 2 metrics, mlflow server on {kind}",
        mine,
        baseline,
        ">= 50x faster",
        baseline / mine >= 50,
        detail=f"local `mlflow server` ({kind} backend, 2 workers, answered /health {startup:.0f} s "
        f"after start); per step: plain `mlflow.log_metrics(step=s)` {baseline / STEPS * 1e3:.1f} ms "
        f"(one run), StepLogger {mine / STEPS * 1e3:.3f} ms (median of 3).",
    )


def _batch(url: str, kind: str, tmp: Path) -> Result | None:
    if importlib.util.find_spec("workbench.runner") is None or not NOTEBOOK.exists():
        return None
    batch = tmp / "eight.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOK}\nexperiment: bench-server-batch\ngrid: {{lr: [0.1, 0.2], depth: [1, 2, 3, 4]}}\n"
    )
    cmd = [sys.executable, "-m", "workbench.cli", "batch", str(batch), "--jobs", "4"]

    def run_with(uri: str, project: Path) -> float:
        project.mkdir(exist_ok=True)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "WORKBENCH_PROJECT_DIR": str(project)}
        t = time.perf_counter()
        res = subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(
                f"batch against {uri} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return time.perf_counter() - t

    with temp_store() as sqlite_uri:
        embedded = run_with(sqlite_uri, tmp / "embedded")
    served = run_with(url, tmp / "served")
    return Result(
        f"batch of 8 short notebooks (--jobs 4), server on {kind} vs embedded SQLite",
        served,
        embedded,
        "server no more than 1.5x slower",
        served <= 1.5 * embedded,
        detail=f"`workbench batch --jobs 4`, command to exit, {os.cpu_count()} cores: "
        f"server {served:.1f} s, embedded {embedded:.1f} s (embedded ran first). Each job starts a kernel, resumes "
        "the runner's run, logs params, metrics and the executed notebook (proxied upload).",
    )


def run() -> list[Result]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wb-bench-server-")))
        os.chmod(tmp, 0o755)
        url, kind, startup = stack.enter_context(_server(tmp))
        results = [_steps(url, kind, startup)]
        batch = _batch(url, kind, tmp)
        if batch is not None:
            results.append(batch)
        return results
