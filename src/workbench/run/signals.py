"""How ``workbench run`` and ``workbench batch`` stop on a signal: every run ended truthfully.

SIGTERM (``kill``, a cancelled CI job), SIGHUP (a closed terminal) and SIGINT (Ctrl-C), to
the command alone or to its whole process group, must end each run KILLED with the reason
and shut its kernel down, never leave a run RUNNING. Python's own defaults die on the spot
(SIGTERM, SIGHUP: no run is ended, the kernel is orphaned) or raise anywhere (SIGINT: even
half-way through recording a run's end). So the commands take all three the same way
(``handled``): the signal is recorded, and it interrupts only what may be interrupted, the
notebook's execution (``interruptible``: papermill shuts the kernel down on the way out).
Everything else (creating the run, writing the report, ending the run) finishes first, and
the command stops at its next ``check``.

Example::

    with signals.handled():
        ...
        with signals.interruptible():
            execute_the_notebook()      # raises Terminated when a signal comes
        ...
        signals.check()                 # raises Terminated if one came meanwhile
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """The command was asked to stop by a signal; ``reason`` says which.

    A KeyboardInterrupt, so code that lets Ctrl-C through lets it through too. ``result``
    carries what the runner recorded for the run the signal ended (a ``JobResult``).
    """

    def __init__(self, signum: int):
        super().__init__(reason_for(signum))
        self.signum = signum
        self.result: Any = None

    @property
    def reason(self) -> str:
        return str(self)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for Ctrl-C


def reason_for(signum: int) -> str:
    """The words a run's reason gets for a signal."""
    if signum == signal.SIGINT:
        return "interrupted (Ctrl-C)"
    return f"terminated by {signal.Signals(signum).name}"


class _State:
    installed = False
    signum: int | None = None  # the first signal received
    raised = False  # Terminated was raised once already (a second signal only waits)
    depth = 0  # > 0 inside ``interruptible``


_state = _State()


def _on_signal(signum: int, frame: Any) -> None:
    if _state.signum is None:
        _state.signum = signum
    if _state.depth and not _state.raised:
        _state.raised = True
        raise Terminated(_state.signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Take SIGTERM, SIGHUP and SIGINT as above until the block ends (then the previous
    handlers come back). Only the main thread can: elsewhere nothing changes.

    Nested, or in a process forked inside the block (a batch worker), a signal already
    received still counts: the worker of a stopping batch starts nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    outer = _state.installed
    if not outer:
        _state.signum, _state.raised, _state.depth = None, False, 0
    _state.installed = True
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _state.installed = outer


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Let a signal raise ``Terminated`` in this block (once; at once if one came already).
    Without ``handled`` around it, nothing changes."""
    if not _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        check()
        yield
    finally:
        _state.depth -= 1


def stopping() -> Terminated | None:
    """The Terminated a signal received under ``handled`` stands for, or None."""
    return Terminated(_state.signum) if _state.installed and _state.signum is not None else None


def check() -> None:
    """Raise ``Terminated`` when a signal came under ``handled`` and was not raised yet."""
    if _state.installed and _state.signum is not None and not _state.raised:
        _state.raised = True
        raise Terminated(_state.signum)
