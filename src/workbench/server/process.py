"""Processes of the MLflow server and UI: start one in its own process group, stop that
group (uvicorn workers included) and nothing else, check ``/health``, read a log's tail.

Kept apart from ``server`` so ``workbench ui`` and ``workbench lab`` share the same
process handling as ``workbench server start``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from workbench.core import processes
from workbench.core.ports import answers
from workbench.server.auth import ADMIN_PASSWORD_ENV

START_TIMEOUT_S = float(os.environ.get("WORKBENCH_SERVER_START_TIMEOUT", "180"))
STOP_TIMEOUT_S = 30.0


def health(url: str, timeout: float = 3.0) -> bool:
    """True when ``url``/health answers 200 (unauthenticated even with basic auth on)."""
    return answers(url.rstrip("/") + "/health", timeout=timeout)


_children: dict[int, subprocess.Popen] = {}


def spawn(
    cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its own process group), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd,
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
    env.pop(ADMIN_PASSWORD_ENV, None)  # it goes through the private config file instead
    env.pop("MLFLOW_TRACKING_URI", None)  # a server must not log into another server
    return env
