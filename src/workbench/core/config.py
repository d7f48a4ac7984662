"""Where things live: the project folder, the tracking store, artifacts and reports.

Resolution order for the tracking URI:

1. the ``MLFLOW_TRACKING_URI`` environment variable (team mode, CI, tests);
2. ``tracking_uri`` under ``[tool.workbench]`` in the project's ``pyproject.toml``;
3. the embedded default, ``sqlite:///<project>/mlflow.db``.

Relative SQLite paths and artifact folders are resolved against the project folder, never
against the current directory, so a notebook running in ``notebooks/`` and the ``workbench``
command running at the top level share one store. Nothing here touches the disk or MLflow
at import time.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ENV = "WORKBENCH_PROJECT_DIR"
ARTIFACT_ENV = "WORKBENCH_ARTIFACT_ROOT"
CLUSTER_ENV = "WORKBENCH_CLUSTER"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
DEFAULT_REPORTS = "runs_reports"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one project."""

    project_dir: Path
    tracking_uri: str
    artifact_root: Path | None  # None when a server decides (http/https stores)
    reports_dir: Path
    source: str  # which rule gave the tracking URI: "env", "pyproject" or "default"
    # Dask scheduler for `workbench batch` ($WORKBENCH_CLUSTER, else `cluster` in pyproject)
    cluster: str | None = None

    @property
    def is_embedded(self) -> bool:
        """True for a local SQLite store (the embedded default)."""
        return self.tracking_uri.startswith("sqlite:")

    @property
    def is_remote(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))


def find_project_dir(start: Path | None = None) -> Path:
    """Return the project folder: ``$WORKBENCH_PROJECT_DIR``, else the nearest parent of
    ``start`` (default: the current directory) whose pyproject.toml has ``[tool.workbench]``,
    else ``start`` itself."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if "workbench" in _read_tool_table(folder / "pyproject.toml"):
            return folder
    return here


def _read_tool_table(pyproject: Path) -> dict:
    try:
        with pyproject.open("rb") as fh:
            return tomllib.load(fh).get("tool", {})
    except (FileNotFoundError, NotADirectoryError, tomllib.TOMLDecodeError):
        return {}


@lru_cache(maxsize=8)
def _project_settings(project_dir: Path) -> dict:
    return _read_tool_table(project_dir / "pyproject.toml").get("workbench", {})


def resolve_sqlite_uri(uri: str, base: Path) -> str:
    """Make a relative ``sqlite:///file.db`` absolute against ``base``."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix) :]
    if path in ("", ":memory:") or path.startswith("/"):
        return uri
    return prefix + str((base / path).resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file behind a ``sqlite:///`` URI, or None for other stores."""
    if uri.startswith("sqlite:///") and not uri.endswith(":memory:"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return None


def get_settings(start: Path | None = None) -> Settings:
    """Resolve the configuration now (cheap; reads at most one small TOML file)."""
    project = find_project_dir(start)
    table = _project_settings(project)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "env"
    elif table.get("tracking_uri"):
        uri, source = str(table["tracking_uri"]), "pyproject"
    else:
        uri, source = f"sqlite:///{DEFAULT_DB}", "default"
    uri = resolve_sqlite_uri(uri, project)

    artifact_root: Path | None = None
    if not uri.startswith(("http://", "https://", "databricks")):
        # A store named by the environment keeps its artifacts beside it, so a temporary
        # store (tests, CI) is wholly temporary; the pyproject setting is for the project's own.
        raw = os.environ.get(ARTIFACT_ENV) or (
            table.get("artifact_root") if source != "env" else None
        )
        if raw:
            artifact_root = (project / Path(raw).expanduser()).resolve()
        elif (db := sqlite_path(uri)) is not None:
            artifact_root = db.parent / DEFAULT_ARTIFACTS
        else:
            artifact_root = project / DEFAULT_ARTIFACTS
    reports = project / str(table.get("reports_dir", DEFAULT_REPORTS))
    cluster = os.environ.get(CLUSTER_ENV) or table.get("cluster") or None
    return Settings(project, uri, artifact_root, reports, source, cluster and str(cluster))


def tracking_uri() -> str:
    """The resolved tracking URI (see module docstring)."""
    return get_settings().tracking_uri


def ui_url(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 5000) -> str:
    """Base URL of the MLflow UI for these settings: the server itself in team mode,
    otherwise where ``workbench ui`` serves the embedded store."""
    settings = settings or get_settings()
    if settings.is_remote:
        return settings.tracking_uri.rstrip("/")
    return os.environ.get("WORKBENCH_UI_URL", f"http://{host}:{port}").rstrip("/")


# The MLflow 3 UI opens an experiment in its GenAI view (traces) unless the link says which
# workflow it is for; every link the workbench prints or writes opens the training view.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_url(experiment_id: str, settings: Settings | None = None) -> str:
    """Link to an experiment's runs in the MLflow UI (the training view)."""
    return f"{ui_url(settings)}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def run_url(experiment_id: str, run_id: str, settings: Settings | None = None) -> str:
    """Link to a run's page in the MLflow UI (the training view)."""
    return f"{ui_url(settings)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
