"""papermill's saves of the executed notebook, coalesced to one every half second.

papermill writes the whole notebook at every cell's start and end (and on output, every
30 s): eleven writes for a two-cell notebook, each a truncate-and-rewrite that the file
system flushes at close (ext4 does so for a truncated file, so that a crash cannot leave it
empty): about 3 ms a write here, a sixth of a short job's time. ``CoalescedSaves`` writes at
most once every ``SAVE_EVERY_S``: a save asked sooner is written when that time is up, by a
timer on the event loop nbclient runs the cell in (so a long cell that starts right after a
fast one still finds the fast one's outputs on disk half a second later, and the writer runs
on the thread that changes the notebook, never beside it). papermill's final save, after the
last cell, is never delayed.

Example::

    saves = CoalescedSaves(nb_man)   # papermill's NotebookExecutionManager
    try:
        client.execute()
    finally:
        saves.close()                # papermill's notebook_complete() then writes it all
"""

from __future__ import annotations

import time
from typing import Any

SAVE_EVERY_S = 0.5


class CoalescedSaves:
    """Coalesce ``nb_man.save`` calls until ``close``."""

    def __init__(self, nb_man: Any) -> None:
        self.nb_man = nb_man
        self.write = nb_man.save  # papermill's own (writes the file)
        self.last = time.monotonic()  # papermill wrote it at the notebook's start
        self.timer: Any = None
        nb_man.save = self.save  # the instance attribute shadows the method until close

    def save(self, **kwargs: Any) -> None:
        if kwargs.get("nb") is not None:  # papermill's catch_nb_assignment, as its save does
            self.nb_man.nb = kwargs["nb"]
        wait = self.last + SAVE_EVERY_S - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self.timer is None:
            from jupyter_core.utils import ensure_event_loop

            # the loop nbclient's run_sync runs the next cell in, on this thread
            self.timer = ensure_event_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        self._cancel()
        self.write()
        self.last = time.monotonic()

    def close(self) -> None:
        """Stop coalescing (the loop outlives this execution: no timer may fire later)."""
        self._cancel()
        self.nb_man.__dict__.pop("save", None)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
