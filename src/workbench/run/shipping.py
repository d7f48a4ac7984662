"""What travels with a job to a Dask worker, and what the worker does with it.

Workers share nothing with the machine that planned the batch but the tracking server. So a
``Shipment`` carries the planned job, the bytes of its notebook and parameter files, and the
environment the run needs (tracking URI and credentials: task data, never a command line,
masked in its repr). On the worker, ``run_shipped`` writes the files into a folder of the
batch under the worker's local directory, points the process at the server for the job's
duration (``_lease``: concurrent jobs of one batch share the same environment, a job of
another batch waits) and calls ``runner.execute``, exactly as a local batch worker does.

A worker can die mid-job; Dask then runs the task again on another worker, whose run store
(``cluster_runs.ClusterRunStore``) first marks KILLED, with the reason, the run the earlier
attempt left RUNNING. A worker that closes mid-job (it lost its scheduler) kills its kernels
(``_Watchdog``), so the runner ends those runs KILLED before the worker exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.core import names
from workbench.core.config import Settings, get_settings
from workbench.run import cluster_runs
from workbench.run.jobs import Job, JobResult, project_relative

# What a worker needs to reach the server, sent with each task (values never printed).
CREDENTIAL_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
)
# Set on the worker for the job's duration (None: unset): nothing local may leak in.
CLEARED_ENV = (names.ARTIFACT_ENV, "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", *CREDENTIAL_ENV)


@dataclass
class Shipment:
    """One job and everything it needs on a worker that has only the project installed."""

    job: Job  # as planned on the client (its paths are the client's)
    batch_id: str
    index: int
    notebook: str  # relative path of the notebook inside ``files``
    params_files: tuple[str, ...]  # relative paths of the parameter files inside ``files``
    files: dict[str, bytes] = field(repr=False)
    env: dict[str, str] = field(repr=False)  # tracking URI and credentials


@dataclass
class Outcome:
    """What a worker returns: the job's result and lines worth showing on the client."""

    result: JobResult
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ on the client


def client_env(settings: Settings | None = None) -> dict[str, str]:
    """The tracking URI (and registry URI) and whichever credentials are set here."""
    settings = settings or get_settings()
    env = {
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": os.environ.get("MLFLOW_REGISTRY_URI") or settings.tracking_uri,
    }
    env.update({k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)})
    return env


def travel_path(path: str | Path, settings: Settings | None = None) -> str:
    """Where a file lands in the worker's folder: its project-relative path, or for a file
    outside the project ``_outside/<hash of its folder>/<name>`` (two folders' same-named
    files stay apart)."""
    rel = project_relative(Path(path), settings)
    if not Path(rel).is_absolute():
        return Path(rel).as_posix()
    folder = hashlib.sha256(str(Path(rel).parent).encode()).hexdigest()[:10]
    return f"_outside/{folder}/{Path(rel).name}"


def pack(job: Job, index: int, batch_id: str, env: dict[str, str]) -> Shipment:
    """Read the job's notebook and parameter files into a shipment."""
    settings = get_settings()
    files: dict[str, bytes] = {}
    notebook = travel_path(job.notebook, settings)
    files[notebook] = Path(job.notebook).read_bytes()
    params = []
    for f in job.params_files:
        params.append(travel_path(f, settings))
        files[params[-1]] = Path(f).read_bytes()
    return Shipment(job, batch_id, index, notebook, tuple(params), files, dict(env))


# ------------------------------------------------------------------ on the worker


class _EnvLease:
    """One environment at a time in this process: jobs asking for the same one share it,
    a job asking for another waits until the last holder left (then the old one returns)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._key: tuple | None = None
        self._holders = 0
        self._saved: dict[str, str | None] = {}

    @contextlib.contextmanager
    def hold(self, env: dict[str, str | None]):
        key = tuple(sorted(env.items(), key=lambda kv: kv[0]))
        with self._cond:
            self._cond.wait_for(lambda: self._holders == 0 or self._key == key)
            if self._holders == 0:
                self._key = key
                self._saved = {k: os.environ.get(k) for k in env}
                _apply(env)
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                if self._holders == 0:
                    _apply(self._saved)
                    self._key = None
                    self._cond.notify_all()


def _apply(env: dict[str, str | None]) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_lease = _EnvLease()


def _worker_name() -> tuple[str, Path]:
    """This worker's name and local directory (a temp folder outside a Dask worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name or worker.address), Path(worker.local_directory)
    except (ImportError, ValueError):
        return f"{os.uname().nodename}:{os.getpid()}", Path(tempfile.gettempdir())


def batch_folder(local_dir: Path, batch_id: str) -> Path:
    return local_dir / "workbench-batches" / batch_id


def _write(folder: Path, rel: str, data: bytes) -> Path:
    """Write ``data`` at ``folder/rel`` atomically (jobs of one batch share the folder)."""
    target = (folder / rel).resolve()
    if folder.resolve() not in target.parents:
        raise ValueError(f"refusing a shipped path outside the batch folder: {rel}")
    if target.is_file() and target.read_bytes() == data:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def unpack(shipment: Shipment, folder: Path) -> Job:
    """Write the shipped files under ``folder``; the job with paths on this worker."""
    for rel, data in shipment.files.items():
        _write(folder, rel, data)
    return replace(
        shipment.job,
        notebook=str((folder / shipment.notebook).resolve()),
        params_files=tuple(str((folder / p).resolve()) for p in shipment.params_files),
        parameters=dict(shipment.job.parameters),
    )


def job_env(shipment: Shipment, folder: Path) -> dict[str, str | None]:
    """The process environment while the job runs: the server, and the batch folder as the
    project (reports land there, source names match the client's)."""
    env: dict[str, str | None] = dict.fromkeys(CLEARED_ENV)
    env.update(shipment.env)
    env[names.PROJECT_ENV] = str(folder)
    return env


class _Watchdog:
    """While a job runs: when its worker closes (it lost its scheduler, or was told to stop),
    kill the worker's kernels, so the runner ends the run KILLED with the reason. Left alone,
    the kernels would die with the worker's exit and leave their runs RUNNING."""

    POLL_S = 0.5

    def __init__(self) -> None:
        self.closing = False
        self._done = threading.Event()
        try:
            from distributed import get_worker

            self._worker: Any = get_worker()
        except (ImportError, ValueError):  # not on a Dask worker: nothing to watch
            self._worker = None

    def __enter__(self) -> _Watchdog:
        if self._worker is not None:
            threading.Thread(target=self._watch, name="workbench-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_S):
            if getattr(self._worker.status, "name", "") in ("closing", "closed", "failed"):
                self.closing = True
                _kill_kernels()  # again on every poll: a kernel may still be starting


def _kill_kernels() -> None:
    """SIGKILL every process this worker started (its jobs' kernels, and a kernel template
    with its forked kernels): the worker is closing, nothing of it may outlive it."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_shipped(shipment: Shipment) -> Outcome:
    """The Dask task: run one shipped job like a local batch worker does.

    A notebook's failure is a result, never an exception (Dask must not retry it); a run the
    store could not create is reported as this job's failure, as in ``pool``.
    """
    from workbench.run import runner, startup

    startup.skip_slow_imports()
    worker, local_dir = _worker_name()
    folder = batch_folder(local_dir, shipment.batch_id)
    folder.mkdir(parents=True, exist_ok=True)
    watchdog = _Watchdog()
    side = cluster_runs.ClusterRunStore(
        shipment.batch_id, shipment.index, worker, lambda: watchdog.closing
    )
    with _lease.hold(job_env(shipment, folder)), watchdog:
        job = unpack(shipment, folder)
        try:
            result = runner.execute(job, store=side)
        except Exception as exc:  # report it as this job's failure, like the local pool
            result = JobResult(job, "FAILED", reason=f"runner error: {type(exc).__name__}: {exc}")
    result.job = shipment.job
    result.job.experiment_id = job.experiment_id or shipment.job.experiment_id
    result.report = None  # a path on the worker; the reports are the run's artifacts
    return Outcome(result, side.notes)


def forget_batch(batch_id: str) -> None:
    """Remove this worker's folder of a batch (its reports are artifacts on the server)."""
    _, local_dir = _worker_name()
    shutil.rmtree(batch_folder(local_dir, batch_id), ignore_errors=True)


def warm_imports() -> None:
    """Import what every job needs (MLflow's client, papermill, nbclient, nbconvert) and
    build the HTML exporter, so the first job on a worker does not pay for them."""
    import mlflow  # noqa: F401
    import nbclient  # noqa: F401
    import papermill  # noqa: F401

    from workbench import tracking  # noqa: F401
    from workbench.run import engine, runner  # noqa: F401

    engine.warm_exporter()


def dask_setup(worker: Any = None) -> None:
    """``dask worker --preload workbench.run.shipping`` calls this at the worker's start:
    start the template its jobs' kernels fork from (``run.kernels``: a kernel ready in half a
    second instead of ~4), from the worker's main thread (the template lives as long as the
    thread that started it), and warm the imports on a thread meanwhile."""
    from workbench.run import kernels

    try:
        kernels.start_template()
    except Exception as exc:  # kernels then start as usual
        print(f"workbench: no kernel template on this worker: {exc}", file=sys.stderr)

    def warm() -> None:
        with contextlib.suppress(Exception):  # an import error shows again in the first job
            warm_imports()

    threading.Thread(target=warm, name="workbench-preload", daemon=True).start()


def dask_teardown(worker: Any = None) -> None:
    """Close the kernel template when the worker closes."""
    from workbench.run import kernels

    kernels.close_template()
