"""What notebooks use: runs (start/resume, naming, tags, StepLogger), data, evaluation, models.

The run helpers are re-exported here, so ``from workbench import tracking`` then
``tracking.start_run(...)`` reads as before; ``data``, ``evaluation`` and ``models`` are
submodules of this package."""

from workbench.tracking.runs import (  # noqa: F401
    CANONICAL_METRICS,
    MAX_BATCH,
    MAX_PARAMS,
    NOTEBOOK_ENV,
    PARAMS_FILE_ENV,
    REDACTED,
    RUN_ID_ENV,
    GitState,
    RunHandle,
    StepLogger,
    canonical_metric,
    end_run,
    git_state,
    is_secret,
    log_params,
    notebook_path,
    redact,
    run_name,
    standard_tags,
    start_run,
)

__all__ = [
    "CANONICAL_METRICS",
    "MAX_BATCH",
    "MAX_PARAMS",
    "NOTEBOOK_ENV",
    "PARAMS_FILE_ENV",
    "REDACTED",
    "RUN_ID_ENV",
    "GitState",
    "RunHandle",
    "StepLogger",
    "canonical_metric",
    "end_run",
    "git_state",
    "is_secret",
    "log_params",
    "notebook_path",
    "redact",
    "run_name",
    "standard_tags",
    "start_run",
]
