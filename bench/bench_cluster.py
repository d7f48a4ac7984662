"""A batch on a Dask cluster against the same batch in a local process pool.

The 8-notebook batch of ``bench_runner`` (tracked.ipynb over a 2 x 4 grid), run by
``workbench batch --cluster`` on two local ``dask worker`` processes (one thread each, started
with ``--preload workbench.run.shipping`` like the docs say) against ``workbench batch
--jobs 2`` on this machine. Both log to the same local ``mlflow server`` (SQLite backend,
proxied artifacts): a cluster batch needs a server, and measuring the pool against the same
server isolates what the cluster adds (connecting, shipping the files, a task per job).
The scheduler, workers and server are started before timing (they are standing
infrastructure); each side runs three times, alternating, and the medians are compared.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "tests" / "runner" / "notebooks"
BIN = Path(sys.executable).parent
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_cmd(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return elapsed


def _start_dask(folder: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and ``workers`` single-thread workers on 127.0.0.1, all joined."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WORKBENCH_"))}
    log = (folder / "dask.log").open("ab")
    common = {"cwd": folder, "env": env, "stdout": log, "stderr": log}
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard"]  # fmt: skip
    procs = [subprocess.Popen(scheduler, **common)]
    time.sleep(1.5)
    for i in range(workers):
        worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                  "--no-dashboard", "--host", "127.0.0.1", "--name", f"bench-w{i + 1}",
                  "--local-directory", str(folder / f"w{i + 1}"),
                  "--preload", "workbench.run.shipping"]  # fmt: skip
        procs.append(subprocess.Popen(worker, **common))
    with Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=60)
    time.sleep(3)  # let the preload finish importing on the workers
    return address, procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def _measure(tmp: Path, server_url: str, address: str) -> Result:
    batch = tmp / "eight.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: bench-cluster\n"
        "grid: {lr: [0.1, 0.2], depth: [1, 2, 3, 4]}\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_url, "WORKBENCH_PROJECT_DIR": str(tmp)}
    wb = str(BIN / "workbench")
    local, remote = [], []
    for _ in range(ROUNDS):
        local.append(_time_cmd([wb, "batch", str(batch), "--jobs", "2"], env, tmp))
        remote.append(_time_cmd([wb, "batch", str(batch), "--cluster", address], env, tmp))
    ours, base = statistics.median(remote), statistics.median(local)
    return Result(
        benchmark="batch of 8 short notebooks, 2 Dask workers vs --jobs 2",
        ours=ours,
        baseline=base,
        target="cluster overhead <= 1.25x",
        passed=ours <= 1.25 * base,
        detail=(
            f"{os.cpu_count()} cores, both against one local `mlflow server` (SQLite); median of "
            f"{ROUNDS} alternating rounds (cluster {', '.join(f'{x:.1f}' for x in remote)} s; "
            f"--jobs 2 {', '.join(f'{x:.1f}' for x in local)} s). Each cluster job ships its "
            "notebook to a single-thread `dask worker` started with `--preload "
            "workbench.run.shipping` (imports warmed, the worker's kernel template started with "
            "the worker, before timing), which runs it with the same runner as a local job: "
            "own kernel (forked from the template), own run, reports logged to the server. "
            "`--jobs 2` starts its pool and its kernel templates inside the command, so the "
            "cluster can come out ahead on this short batch."
        ),
    )


def run() -> list[Result]:
    from workbench import server

    with tempfile.TemporaryDirectory(prefix="wb-bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        state_file = tmp / ".workbench" / "server.json"
        srv = server.launch(
            backend_store_uri=f"sqlite:///{tmp / 'server.db'}",
            artifacts_destination=str(tmp / "artifacts"),
            port=_free_port(),
            state_file=state_file,
        )
        procs: list[subprocess.Popen] = []
        try:
            address, procs = _start_dask(tmp, workers=2)
            return [_measure(tmp, srv.url, address)]
        finally:
            _stop(procs)
            server.shutdown(state_file)
