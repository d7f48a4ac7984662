"""Errors the ``workbench`` command maps to exit codes (kept apart from ``cli`` so that
``python -m workbench`` and the modules it imports share one class)."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or bad parameters: reported on stderr, exit code 2, nothing ran."""
