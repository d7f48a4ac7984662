"""The errors and exit codes of ``workbench server`` and ``workbench ui`` (kept apart so that
the server's helper modules can raise them without importing one another)."""

from __future__ import annotations

from workbench.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE  # noqa: F401  (one definition)


class ServerError(RuntimeError):
    """The server cannot be started, found or stopped as asked; the message says why."""


class UsageProblem(ServerError):
    """Bad usage (missing store or password, busy port, already running): nothing started."""
