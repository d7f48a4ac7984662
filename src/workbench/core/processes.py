"""Facts about processes: is a pid still the process we started, and stopping a group.

A pid alone does not name a process for long: the kernel reuses pids. What does is the pid
together with the process's start time in clock ticks since boot (field 22 of
``/proc/<pid>/stat``). Ticks never move with the wall clock, unlike ``psutil``'s
``create_time`` (boot time + ticks, where boot time is read from a clock an NTP step can
shift), so ticks are what the workbench records and compares. Everything else about
processes goes through psutil.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot, or "" when it is gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int, ticks: str = "") -> bool:
    """True when ``pid`` runs (a zombie does not) and, if ``ticks`` is given, is the same
    process as then."""
    import psutil

    if pid <= 0 or not psutil.pid_exists(pid) or process_state(pid) == "Z":
        return False
    now = start_ticks(pid)
    return not ticks or not now or now == ticks


def namespace_id() -> str:
    """Which pid numbering this process sees: the kernel's boot id and this pid namespace.

    Two containers may share a hostname (and a kernel) while their pids name different
    processes; a pid recorded under another namespace or before a reboot says nothing here.
    """
    parts = []
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(
                os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip()
            )
        except OSError:
            parts.append("?")
    return "|".join(parts)


def process_state(pid: int) -> str:
    """The one-letter state of a process ("R", "S", "Z", ...) or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid`` and its descendants, SIGKILL what is left
    after ``timeout`` seconds, and reap them."""
    import psutil

    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, left = psutil.wait_procs(members, timeout=timeout)
    if left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=5)


# -- children that die with their parent (Linux) -------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)`` through libc; False elsewhere or when refused."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child: have the kernel send ``sig`` when ``parent`` (the thread that started this
    process) dies, and exit now if it already has (Linux ``PR_SET_PDEATHSIG``)."""
    prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os._exit(1)


def die_with_parent_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``Popen`` that ties the child's life to this process: ``sig``
    reaches it when the starting thread (so this process) ends, even when killed outright.
    None off Linux. The death signal follows the *thread* that started the child: start
    children from a thread that outlives them."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls
    parent = os.getpid()

    def preexec() -> None:
        libc_prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec
