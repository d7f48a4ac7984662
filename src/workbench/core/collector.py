"""Pausing Python's cyclic garbage collector around blocks that make short-lived garbage.

A notebook kernel holds half a million objects (MLflow, pandas, scikit-learn, matplotlib).
Objects still alive when a young collection runs are promoted, and once enough have been
promoted the next young collection becomes a full collection of the whole process: a tenth
of a second or more here, paid by whichever call happens to allocate then. Blocks that build
and drop many containers (a skops schema, its audit tree, a matplotlib figure) run with the
collector paused: their acyclic garbage is freed by reference counting as usual, their
cyclic garbage (a figure's artists) by the first young collection after the block, and
nothing of theirs is promoted meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (left as it was on exit: a caller
    that disabled it keeps it disabled)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
