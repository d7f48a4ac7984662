"""The server's state file: what ``workbench server start`` started (pid, start ticks, port,
store), in ``<project>/.workbench/server.json``, so ``stop`` stops exactly that process and
``status`` can report on it; the lock that makes check + spawn + record one step; and the
owner-only, atomic file writes the state and auth config use.

A pid names a process only together with its start time. The state records the start in
clock ticks since boot (``core.processes.start_ticks``), which no clock step can move; a
state file written before ticks were recorded is still read, and compared by the wall-clock
``create_time`` it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from workbench.core import processes
from workbench.core.config import get_settings
from workbench.server.errors import ServerError, UsageProblem

STATE_DIRNAME = ".workbench"
LOCK_TIMEOUT_S = 60.0  # start holds it well under a second; stop, up to its 30 s grace


@dataclass
class ServerState:
    """What ``start`` started: enough for ``stop`` to find exactly that process again."""

    pid: int
    host: str
    port: int
    url: str
    backend_store_uri: str  # password masked
    artifacts_destination: str  # password masked
    auth: bool
    log: str
    started_at: str
    start_ticks: str = ""  # clock ticks since boot at the process's start ("" when unknown)
    create_time: float = 0.0  # wall-clock start: read from older state files, else a fallback

    def is_ours(self) -> bool:
        """True when ``pid`` is still the process we started (not a reused pid)."""
        now = processes.start_ticks(self.pid)
        if self.start_ticks and now:
            return now == self.start_ticks and processes.alive(self.pid)
        created = process_create_time(self.pid)  # no ticks here: an older file, or not Linux
        return (
            bool(self.create_time) and created is not None and abs(created - self.create_time) < 1.0
        )


def state_dir() -> Path:
    """``<project>/.workbench`` (git-ignored), where the state, log and auth config live."""
    return get_settings().project_dir / STATE_DIRNAME


def default_state_file() -> Path:
    return state_dir() / "server.json"


def read_state(state_file: Path | None = None) -> ServerState | None:
    """The recorded state, or None when there is none. Fields it does not know are ignored
    (a newer or older workbench wrote it); a file it cannot read is a ServerError."""
    path = state_file or default_state_file()
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(ServerState)}
        return ServerState(**{k: v for k, v in raw.items() if k in known})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ServerError(
            f"the server state file {path} is unreadable ({exc}); delete it if no server runs"
        ) from exc


def write_state(state_file: Path, state: ServerState) -> None:
    write_private(state_file, json.dumps(asdict(state), indent=2))


@contextlib.contextmanager
def state_lock(folder: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the project's server lock: one ``start`` or ``stop`` at a time checks, changes
    and records, so two starts cannot both find no server and both start one."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / "server.lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise UsageProblem(
            f"another `workbench server start` or `stop` in this project still holds "
            f"{folder / 'server.lock'} after {timeout:.0f} s; nothing was started.\n"
            "fix: wait for it to finish, then run `workbench server status`"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only, atomically: a temporary
    file (mode 0600 from its creation) in the same folder, synced, then renamed over it.

    A reader sees the old content or the new one, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def process_create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
