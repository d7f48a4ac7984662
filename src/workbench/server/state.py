"""The server's state file: what ``workbench server start`` started (pid, start time, port,
store), in ``<project>/.workbench/server.json``, so ``stop`` stops exactly that process and
``status`` can report on it; plus the owner-only file writes the state and auth config use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.core.config import get_settings
from workbench.server.errors import ServerError

STATE_DIRNAME = ".workbench"


@dataclass
class ServerState:
    """What ``start`` started: enough for ``stop`` to find exactly that process again."""

    pid: int
    create_time: float
    host: str
    port: int
    url: str
    backend_store_uri: str  # password masked
    artifacts_destination: str
    auth: bool
    log: str
    started_at: str

    def is_ours(self) -> bool:
        """True when ``pid`` is still the process we started (not a reused pid)."""
        ct = process_create_time(self.pid)
        return ct is not None and abs(ct - self.create_time) < 1.0


def state_dir() -> Path:
    """``<project>/.workbench`` (git-ignored), where the state, log and auth config live."""
    return get_settings().project_dir / STATE_DIRNAME


def default_state_file() -> Path:
    return state_dir() / "server.json"


def read_state(state_file: Path | None = None) -> ServerState | None:
    path = state_file or default_state_file()
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServerError(
            f"the server state file {path} is unreadable ({exc}); delete it if no server runs"
        ) from exc


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def process_create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
