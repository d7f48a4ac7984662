"""The ``workbench`` command: parsing, one small function per command, doctor."""

from workbench.cli.main import (  # noqa: F401
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    build_parser,
    main,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]
