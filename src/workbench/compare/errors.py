"""The one exception of ``workbench.compare`` and its helper modules (kept apart so that
each of them can raise it without importing the others)."""

from __future__ import annotations


class CompareError(ValueError):
    """The comparison cannot be made as asked; the message names what exists."""
