"""The errors and exit codes of ``workbench server`` and ``workbench ui`` (kept apart so that
the server's helper modules can raise them without importing one another)."""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ServerError(RuntimeError):
    """The server cannot be started, found or stopped as asked; the message says why."""


class UsageProblem(ServerError):
    """Bad usage (missing store or password, busy port, already running): nothing started."""
