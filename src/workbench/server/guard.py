"""``python -m workbench.server.guard PARENT_PID -- CMD...``: run CMD so that it, and every
process it starts, ends when the workbench command that started it ends.

``workbench ui`` and ``workbench lab`` start servers that start processes of their own
(``mlflow server`` starts uvicorn; JupyterLab starts kernels in their own sessions). Ctrl-C or
SIGTERM reaches the command, which stops them; a command killed outright (SIGKILL, the OOM
killer) runs no cleanup at all. The guard sits between the two, as the leader of the
servers' process group:

- the kernel sends it SIGTERM when the command dies (``PR_SET_PDEATHSIG``, Linux; elsewhere
  it notices within 0.2 s that its parent changed);
- it is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a process whose parent died is
  handed to the guard instead of init and is still found among its descendants;
- on SIGTERM, SIGHUP or SIGINT, its parent's death, or CMD's own exit, it stops every
  descendant (SIGTERM, SIGKILL after ``GRACE_S``) and exits with CMD's code (128 + the
  signal when it was told to stop).

It imports nothing heavy: it starts in well under a second next to the servers it guards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from workbench.core import processes

GRACE_S = 10.0  # for a graceful stop before SIGKILL
POLL_S = 0.2

_stop_signal = 0


def _on_signal(signum: int, frame) -> None:
    global _stop_signal
    _stop_signal = signum


def stop_descendants(grace: float = GRACE_S) -> None:
    """SIGTERM every descendant of this process, SIGKILL those left after ``grace`` s
    (and any started meanwhile), and reap them."""
    import psutil

    me = psutil.Process()
    procs = me.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(procs, timeout=grace)
    left += [p for p in me.children(recursive=True) if p not in left]
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)


def run(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` until it exits, this guard is told to stop, or ``parent`` dies; then
    stop all that is left. Returns the exit code the guard should end with."""
    processes.prctl(processes.PR_SET_PDEATHSIG, signal.SIGTERM)
    processes.prctl(processes.PR_SET_CHILD_SUBREAPER, 1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    child = None
    # The parent may have died before the death signal was asked for: then it never comes.
    if os.getppid() == parent and not _stop_signal:
        child = subprocess.Popen(cmd)
        while child.poll() is None and not _stop_signal and os.getppid() == parent:
            time.sleep(POLL_S)
    code = child.returncode if child is not None else None
    stop_descendants()
    if code is not None:
        return code if code >= 0 else 128 - code
    return 128 + (_stop_signal or signal.SIGTERM)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m workbench.server.guard PARENT_PID -- CMD...", file=sys.stderr)
        return 2
    return run(int(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
