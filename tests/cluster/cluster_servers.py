"""Real servers for the cluster tests: a ``dask scheduler``, ``dask worker`` processes and an
``mlflow server`` (SQLite backend, proxied artifacts), each on a free loopback port with its
own temporary folder, each stopped by its process id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
WORKBENCH = [str(BIN / "workbench")]  # the console script
NOTEBOOKS = Path(__file__).resolve().parents[1] / "runner" / "notebooks"
# What a worker must not inherit: it learns the tracking server from each task.
_PRIVATE_ENV = ("MLFLOW_", "WORKBENCH_")


def worker_env() -> dict[str, str]:
    """This environment without any MLflow or workbench variable (and Agg for matplotlib)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV)}
    env["MPLBACKEND"] = "Agg"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop_all(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM to every process still running, then wait for each (SIGKILL after timeout)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class DaskCluster:
    """A scheduler and its workers (``--no-nanny``: the worker is the process we kill)."""

    folder: Path
    port: int
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def add_worker(self, name: str) -> subprocess.Popen:
        home = self.folder / name
        home.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(BIN / "dask"), "worker", self.address, "--name", name, "--nthreads", "1",
            "--no-nanny", "--no-dashboard", "--local-directory", str(home),
            "--host", "127.0.0.1", "--preload", "workbench.run.shipping",
        ]  # fmt: skip
        log = (home / "worker.log").open("ab")
        proc = subprocess.Popen(
            cmd, cwd=home, env=worker_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        _stop_all([*self.workers, self.scheduler])


def start_cluster(folder: Path, workers: int = 2) -> DaskCluster:
    """A ``dask scheduler`` on a free loopback port and ``workers`` workers, all joined."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "scheduler.log"
    log = log_path.open("ab")
    cmd = [
        str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
        "--no-dashboard",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=folder, env=worker_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
    )
    cluster = DaskCluster(folder, port, proc)
    try:
        _wait_port(port, proc, log_path)
        for i in range(workers):
            cluster.add_worker(f"w{i + 1}")
        cluster.wait_workers(workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class MlflowServer:
    url: str
    state_file: Path
    artifacts: Path

    def stop(self) -> None:
        from workbench import server

        server.shutdown(self.state_file)


def start_mlflow_server(folder: Path) -> MlflowServer:
    """``mlflow server`` on SQLite with proxied artifacts, through the workbench's launcher."""
    from workbench import server

    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / ".workbench" / "server.json"
    artifacts = folder / "artifacts"
    state = server.launch(
        backend_store_uri=f"sqlite:///{folder / 'server.db'}",
        artifacts_destination=str(artifacts),
        port=free_port(),
        state_file=state_file,
        workers=1,
    )
    return MlflowServer(state.url, state_file, artifacts)


def write_batch(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path
