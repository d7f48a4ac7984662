"""A quiet terminal: the libraries' log lines go to a file next to the reports.

MLflow, alembic and Optuna log at INFO (``Creating initial MLflow database tables...``) onto
the same terminal as the workbench's own output. A workbench command routes them to
``<reports_dir>/workbench.log`` instead, and to stderr as well with ``--verbose``.

MLflow installs its own stderr handler when it is imported unless ``MLFLOW_CONFIGURE_LOGGING``
is false, so ``route_library_logs`` runs first thing in the command process (children forked
or spawned from it inherit both the setting and the handlers). Kernels get the environment
as the user had it (``for_kernel``): a notebook's MLflow output stays in the notebook.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# logger -> the least level kept in the file (SQLAlchemy's INFO is every SQL statement)
LIBRARY_LOGGERS = {
    "mlflow": logging.INFO,
    "alembic": logging.INFO,
    "optuna": logging.INFO,
    "sqlalchemy": logging.WARNING,
    "urllib3": logging.WARNING,
}
LOG_FILE_NAME = "workbench.log"
_CONFIGURE_ENV = "MLFLOW_CONFIGURE_LOGGING"
_SET_BY_US = "WORKBENCH_SET_MLFLOW_CONFIGURE_LOGGING"


class _FolderMakingFileHandler(logging.FileHandler):
    """A file handler that creates its file (and folder) only when a record comes: a command
    refused for bad input writes nothing at all."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        super().emit(record)


def route_library_logs(log_file: Path, *, verbose: bool = False) -> Path:
    """Send the libraries' log records to ``log_file`` (and to stderr when ``verbose``)."""
    if _CONFIGURE_ENV not in os.environ:
        os.environ[_CONFIGURE_ENV] = "false"
        os.environ[_SET_BY_US] = "1"
    handlers: list[logging.Handler] = [_FolderMakingFileHandler(log_file)]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(fmt)
    for name, level in LIBRARY_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.handlers = list(handlers)
        logger.setLevel(level)
        logger.propagate = False
    return log_file


def for_kernel(env: dict[str, str]) -> dict[str, str]:
    """``env`` as the user had it: without the logging switch the command set for itself."""
    if env.get(_SET_BY_US) == "1":
        env = {k: v for k, v in env.items() if k not in (_CONFIGURE_ENV, _SET_BY_US)}
    return env
