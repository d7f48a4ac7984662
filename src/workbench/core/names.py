"""The names other programs see: environment variables and MLflow tags the workbench sets.

They live here, at the bottom of the house, because several layers read what another wrote:
the runner tags a run that the report index, ``batch --resume`` and the stale-run sweep read
back, and hands the kernel variables that ``tracking.start_run`` reads.
"""

from __future__ import annotations

# -- environment variables -------------------------------------------------------------------
PROJECT_ENV = "WORKBENCH_PROJECT_DIR"  # the project folder, when not found from the cwd
ARTIFACT_ENV = "WORKBENCH_ARTIFACT_ROOT"  # where the embedded store's artifacts go
RUN_ID_ENV = "WORKBENCH_RUN_ID"  # the run the runner created for this notebook execution
NOTEBOOK_ENV = "WORKBENCH_NOTEBOOK"  # the executed notebook's path, project-relative
PARAMS_FILE_ENV = "WORKBENCH_PARAMS_FILE"  # the parameter files used, os.pathsep-separated

# -- tags of a run the runner created (one notebook execution) ----------------------------
TAG_RUNNER = "workbench.runner"  # "papermill": this run is a notebook execution
TAG_PID = "workbench.runner.pid"
TAG_HOST = "workbench.runner.host"
TAG_PSTART = "workbench.runner.proc_start"  # the runner's start tick (tells reused pids)
TAG_PIDNS = "workbench.runner.pid_namespace"  # boot id + pid namespace the pid belongs to
TAG_LABEL = "workbench.label"
TAG_HASH = "workbench.param_hash"  # what `batch --resume` matches
TAG_PARAMS = "workbench.parameters"
TAG_REASON = "workbench.status_reason"
TAG_DURATION = "workbench.duration_s"
TAG_REPORT = "workbench.report"
TAG_REPORT_HTML = "workbench.report.html"
TAG_METRIC = "workbench.key_metric"
TAG_EXPERIMENT = "workbench.experiment"
