"""Processes of the MLflow server and UI: start one in its own process group, stop that
group (uvicorn workers included) and nothing else, check ``/health``, read a log's tail.

A server started for a command in the foreground (``ui``, ``lab``) dies with that command,
however it ends: it runs under ``server.guard``, which stops it and everything it started
when the command exits, is interrupted, or is killed outright. Only the detached team
server (``workbench server start``, stopped by ``workbench server stop``) runs on its own.

Kept apart from ``server`` so ``workbench ui`` and ``workbench lab`` share the same
process handling as ``workbench server start``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from workbench.core import processes
from workbench.core.ports import answers
from workbench.server.auth import ADMIN_PASSWORD_ENV, ADMIN_USERNAME_ENV

START_TIMEOUT_S = float(os.environ.get("WORKBENCH_SERVER_START_TIMEOUT", "180"))
STOP_TIMEOUT_S = 30.0


def health(url: str, timeout: float = 3.0) -> bool:
    """True when ``url``/health answers 200 (unauthenticated even with basic auth on)."""
    return answers(url.rstrip("/") + "/health", timeout=timeout)


_children: dict[int, subprocess.Popen] = {}


def guarded(cmd: list[str]) -> list[str]:
    """``cmd`` run under ``server.guard``: it and all it starts end with this process."""
    return [sys.executable, "-m", "workbench.server.guard", str(os.getpid()), "--", *cmd]


def spawn(
    cmd: list[str],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
    detached: bool = False,
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its own process group), output to ``log``.

    Unless ``detached``, it runs under the guard and dies with this process (call this from
    the main thread: the kernel ties the guard to the thread that started it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd if detached else guarded(cmd),
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def stop_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by ``pid``, wait, then SIGKILL what is left.

    The server's uvicorn workers live in that group, so nothing is orphaned.
    """
    processes.stop_group(pid, timeout)
    # Reap it if it is our own child, so no zombie is left behind.
    if (proc := _children.pop(pid, None)) is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # GenAI job execution starts extra consumer processes that a tracking server for
    # notebooks does not use; an explicit setting in the environment still wins.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # The admin's name and password reach only the team server with --auth (auth.admin_env).
    env.pop(ADMIN_PASSWORD_ENV, None)
    env.pop(ADMIN_USERNAME_ENV, None)
    env.pop("MLFLOW_TRACKING_URI", None)  # a server must not log into another server
    return env


def store_env(
    backend_store_uri: str,
    *,
    artifacts_destination: str | None = None,
    default_artifact_root: str | None = None,
) -> dict[str, str]:
    """The store URIs for ``mlflow server`` as environment variables (its own options'
    ``envvar``s): a password in them shows in no process list, unlike an argument."""
    env = {"MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    if artifacts_destination:
        env["MLFLOW_ARTIFACTS_DESTINATION"] = artifacts_destination
    if default_artifact_root:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = default_artifact_root
    return env
