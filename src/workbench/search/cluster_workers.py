"""``workbench search-worker`` processes started on a Dask cluster instead of this machine.

Each worker is one Dask task that runs ``workbench search-worker`` in a subprocess on
whichever machine the scheduler picks, joined to the same study through its storage (an
RDB URL across machines; a journal file only when every worker sees that path). The storage
URL and the tracking server's URL and credentials travel as task data and reach the
subprocess through its environment, never its command line; the task's repr hides them.

Example::

    workers = search.start_workers(study.name, "postgresql://...", 4, cluster="tcp://sched:8786")
    codes = search.wait_workers(workers, timeout=600)
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

CREDENTIAL_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class WorkerTask:
    """What one cluster worker needs; ``repr`` shows no URL or password."""

    study: str
    n_trials: int | None
    timeout: float | None
    env: dict[str, str] = field(repr=False)

    def __call__(self) -> int:
        """Run on the Dask worker: one ``workbench search-worker``; its exit code."""
        cmd = [sys.executable, "-m", "workbench.cli", "search-worker", "--study", self.study]
        cmd += ["--trials", str(self.n_trials)] if self.n_trials else []
        cmd += ["--timeout", str(self.timeout)] if self.timeout else []
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False).returncode


class ClusterWorker:
    """A worker running as a Dask task, waited for like a process (``wait``, ``kill``)."""

    def __init__(self, future: Any, client: Any):
        self.future, self.client = future, client
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        from distributed import TimeoutError as DaskTimeout

        if self.future.cancelled():
            return self.returncode if self.returncode is not None else -9
        try:
            self.returncode = int(self.future.result(timeout=timeout))
        except (TimeoutError, DaskTimeout) as exc:
            raise subprocess.TimeoutExpired("search-worker (Dask task)", timeout or 0) from exc
        return self.returncode

    def kill(self) -> None:
        self.future.cancel()
        self.returncode = -9


def start_cluster_workers(
    study_name: str,
    storage: str,
    n: int,
    *,
    cluster: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage_env: str,
) -> list[ClusterWorker]:
    """Submit ``n`` search workers to the Dask scheduler at ``cluster``."""
    from distributed import Client

    client = Client(cluster, timeout=30, set_as_default=False)
    env = {k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)}
    env[storage_env] = storage
    task = WorkerTask(study_name, n_trials, timeout, env)
    futures = [
        client.submit(task, pure=False, key=f"search-worker-{study_name}-{i}-{os.getpid()}")
        for i in range(n)
    ]
    return [ClusterWorker(f, client) for f in futures]
