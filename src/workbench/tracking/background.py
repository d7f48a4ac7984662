"""Work a run does off the notebook's path: started on a thread, waited for by the run.

``start_run`` hands the writes nothing reads at once (parameters, the dataset's profile and
input) to a thread, so that they overlap the training that usually follows: a boosting fit
runs single-threaded in compiled code that releases the GIL, and the machine has a second
core. The run waits for that work before anything reads it back (``RunHandle.run``, the
helpers that log into the run) and at its end; an error raised on the thread is raised
there, never lost, and a run we own then ends FAILED, never left RUNNING.

The thread is not a daemon: an interpreter that exits waits for it, so nothing is left
half-written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Pending:
    """``work()`` running on its own thread; ``wait()`` joins it and raises its error."""

    def __init__(self, work: Callable[[], None], what: str):
        self.what = what
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"workbench: {what}")
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - kept for wait() to raise in the caller
            self._error = exc

    def wait(self) -> None:
        """Wait for the work; raise what it raised (once: a second wait returns)."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"workbench: raised on a background thread while {self.what}")
            raise error

    def wait_quietly(self) -> None:
        """Wait for the work, dropping its error (another error is being raised)."""
        self._thread.join()
        self._error = None
