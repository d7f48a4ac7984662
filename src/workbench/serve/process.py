"""Load a model by alias and predict on raw rows; serve it over REST and follow its alias.

``load("models:/churn@champion")`` pins the alias to the version it names now and returns a
``LoadedModel`` whose ``predict_frame`` takes the dataset's own columns.

``serve(model_uri)`` (``workbench serve MODEL_URI``) is a small FastAPI app on MLflow's pyfunc,
run with uvicorn in the current environment and bound to 127.0.0.1. It speaks MLflow's
scoring protocol (``POST /invocations`` with ``dataframe_split``, ``dataframe_records``,
``instances`` or ``inputs``; ``GET /ping``, ``/health``, ``/version``). The input schema of the
model's signature is enforced: a missing column or a wrong type gets 422, a malformed body
400, each naming the problem, and the server keeps serving.

When the URI names an alias, a background thread re-resolves it every ``refresh_interval``
seconds, as the article's FastAPI model manager does, but: it loads a new model only when
the alias moved, loads the pinned version (so the version reported is the one loaded),
swaps model and version together in one step (a request never mixes two versions), and a
failed reload keeps the old model serving. Every response names the version that answered
(``model_version`` field and ``X-Model-Version`` header).

Example::

    with start_server("models:/churn@champion", refresh_interval=5) as server:
        requests.post(server.url + "/invocations", json={"dataframe_split": ...})

The model side (URIs, loading, following an alias) lives in ``serve.model``, the REST app
and its request parsing in ``serve.app``; every public name is importable from here.

A server started by ``start_server`` dies with the process that started it: stopped at its
exit (Ctrl-C included), and sent SIGTERM by the kernel when that process dies any other way
(SIGTERM, killed outright; Linux ``PR_SET_PDEATHSIG``). It starts with MLflow's pickle
loading off unless the caller's environment decided otherwise.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workbench.core import processes
from workbench.core.ports import free_port, wait_http
from workbench.serve.app import FORMATS, VERSION_HEADER, create_app, parse_request, serve
from workbench.serve.model import (
    LoadedModel,
    ModelManager,
    ModelRef,
    RequestError,
    ServingError,
    load,
    parse_model_uri,
    resolve,
)

__all__ = [
    "FORMATS",
    "VERSION_HEADER",
    "LoadedModel",
    "ModelManager",
    "ModelRef",
    "RequestError",
    "ServerProcess",
    "ServingError",
    "create_app",
    "free_port",
    "load",
    "parse_model_uri",
    "parse_request",
    "resolve",
    "serve",
    "start_server",
]


# ---------------------------------------------------------------- a server in a subprocess


class ServerProcess:
    """A ``workbench serve`` subprocess; stop it with ``stop()`` or a ``with`` block."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        """What the server wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_spawner: ThreadPoolExecutor | None = None
_spawner_guard = threading.Lock()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM (uvicorn's clean stop) when the
    thread that started it ends, and so when this process dies (Linux only; else None)."""
    return processes.die_with_parent_preexec(signal.SIGTERM)


def _popen_bound(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``Popen`` for a child that must not outlive this process.

    The death signal follows the *thread* that started the child: off the main thread, the
    start is handed to one thread that lives as long as this process, so a caller's short
    thread ending does not take the server with it.
    """
    global _spawner
    kwargs["preexec_fn"] = _die_with_parent()
    if kwargs["preexec_fn"] is None or threading.current_thread() is threading.main_thread():
        return subprocess.Popen(cmd, **kwargs)
    with _spawner_guard:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-spawner")
    return _spawner.submit(subprocess.Popen, cmd, **kwargs).result()


def start_server(
    model_uri: str,
    *,
    port: int | None = None,
    refresh_interval: float = 30.0,
    timeout: float = 120.0,
    log_path: str | Path | None = None,
) -> ServerProcess:
    """Start ``workbench serve`` on 127.0.0.1 in a subprocess and wait until it answers /ping.

    The child uses the same tracking store as this process. Raises ``ServingError`` with the
    server's log when it exits or does not answer within ``timeout`` seconds.
    """
    from workbench.core.config import get_settings

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="workbench-serve-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    env = {
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        **os.environ,
        "MLFLOW_TRACKING_URI": get_settings().tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "serve",
        model_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--refresh-interval", str(refresh_interval)]
    with log_path.open("wb") as log:
        proc = _popen_bound(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    server = ServerProcess(proc, url, log_path)
    atexit.register(server.stop)  # a notebook kernel that exits takes its server with it
    if wait_http(url + "/ping", proc=proc, timeout=timeout, every=0.25):
        return server
    if proc.poll() is not None:
        raise ServingError(
            f"workbench serve exited with code {proc.returncode}:\n{server.log()[-3000:]}"
        )
    server.stop()
    raise ServingError(
        f"workbench serve did not answer on {url} within {timeout:g} s:\n{server.log()[-3000:]}"
    )
