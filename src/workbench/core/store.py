"""Prepare a tracking store once, safely, and hand out experiment ids.

Two facts measured on MLflow 3.17 shape this module. Six processes opening a fresh SQLite
store at once all crashed in schema migration, and ``mlflow.set_experiment(new_name)`` from
parallel processes sent most runs to the Default experiment without any error. So:

* the first process to touch an embedded store creates its schema under a file lock while
  the others wait, and switches SQLite to WAL so that many writers can share it;
* experiments are created once, under the same lock, and callers get an experiment *id* to
  pass around instead of a name to look up again.

Against a tracking server (team mode) the server owns the schema; creating an experiment
that another process created a moment earlier is treated as success.

Example::

    from workbench.core import store
    client = store.connect()                 # sets mlflow's tracking URI too
    exp_id = store.experiment_id("churn")    # safe from many processes at once
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.core.config import Settings, get_settings, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

_prepared: set[str] = set()
_thread_lock = threading.Lock()
LOCK_TIMEOUT_S = 300


class StoreError(RuntimeError):
    """The tracking store cannot be opened or used as asked."""


@contextmanager
def store_lock(settings: Settings | None = None):
    """Hold the inter-process lock of an embedded store (no-op for server stores)."""
    settings = settings or get_settings()
    db = sqlite_path(settings.tracking_uri)
    if db is None:
        with _thread_lock:
            yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock, FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S):
        yield


def connect(settings: Settings | None = None, *, activate: bool = True) -> MlflowClient:
    """Prepare the store (once per process) and return a client for it.

    With ``activate`` (the default) mlflow's fluent API is pointed at the same store, so
    ``mlflow.log_metric`` and friends write where the workbench does.
    """
    import mlflow

    settings = settings or get_settings()
    uri = settings.tracking_uri
    if uri not in _prepared:
        with store_lock(settings):
            if uri not in _prepared:
                _prepare(settings)
                _prepared.add(uri)
    if activate:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _prepare(settings: Settings) -> None:
    """Create or migrate the schema; the caller holds the store lock."""
    import mlflow

    db = sqlite_path(settings.tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        if settings.artifact_root is not None:
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
    try:
        client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise StoreError(
            f"cannot open the tracking store {settings.tracking_uri!r}: {exc}\n"
            "fix: check the path or server address; `workbench doctor` shows what is "
            "resolved and from where (MLFLOW_TRACKING_URI, pyproject.toml or the default)."
        ) from exc
    if db is not None:
        # WAL lets readers and one writer work at once; it is stored in the file, so this
        # runs once per store in effect.
        with sqlite3.connect(db, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")


def _slug(name: str) -> str:
    """The experiment's folder name under the artifact root: never ``.``, ``..`` or a path
    (a name such as ``"..\\n"`` must not put artifacts above the root)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.").lower()
    return slug if slug and set(slug) != {"."} else "experiment"


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """Return the id of experiment ``name``, creating it once if it does not exist.

    Safe when many processes ask for the same new name at the same moment.
    """
    from mlflow.exceptions import MlflowException

    if not name or not name.strip():
        raise StoreError("experiment name is empty: give a name such as 'churn-gbm'")
    settings = settings or get_settings()
    client = connect(settings, activate=False)
    lock = store_lock(settings) if settings.is_embedded else nullcontext()
    with lock:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if settings.artifact_root is not None:
                location = (settings.artifact_root / _slug(name)).as_uri()
            try:
                # Without this tag the MLflow 3 UI opens the experiment in its GenAI view.
                tags = {"mlflow.experimentKind": "custom_model_development"}
                return client.create_experiment(name, artifact_location=location, tags=tags)
            except MlflowException as exc:
                # Another process (or machine) created it between our look-up and create.
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise StoreError(f"cannot create experiment {name!r}: {exc}") from exc
    if exp.lifecycle_stage == "deleted":
        raise StoreError(
            f"experiment {name!r} exists but is deleted (id {exp.experiment_id}).\n"
            f"fix: restore it with `mlflow experiments restore --experiment-id "
            f"{exp.experiment_id}` or choose another experiment name."
        )
    return exp.experiment_id


def describe(settings: Settings | None = None) -> dict[str, str]:
    """A short description of the store for `workbench doctor` and reports."""
    settings = settings or get_settings()
    info = {"tracking_uri": settings.tracking_uri, "source": settings.source}
    if settings.artifact_root is not None:
        info["artifact_root"] = str(settings.artifact_root)
    db = sqlite_path(settings.tracking_uri)
    if db is not None:
        info["exists"] = str(Path(db).exists())
    return info


# MLflow answers at most this many runs a page; search_runs accepts this many experiments.
PAGE_SIZE = 1000
EXPERIMENTS_PER_QUERY = 50


def iter_experiments(client: MlflowClient) -> Iterator[Any]:
    """Every active experiment of the store, page after page."""
    token = None
    while True:
        page = client.search_experiments(max_results=PAGE_SIZE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def iter_runs(
    client: MlflowClient,
    experiment_ids: Iterable[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
) -> Iterator[Any]:
    """Every run matching ``filter_string`` in the experiments, page after page, however many
    there are (``search_runs`` alone stops at ``max_results``)."""
    ids = list(experiment_ids)
    for i in range(0, len(ids), EXPERIMENTS_PER_QUERY):
        token = None
        while True:
            page = client.search_runs(
                ids[i : i + EXPERIMENTS_PER_QUERY],
                filter_string,
                max_results=PAGE_SIZE,
                order_by=order_by,
                page_token=token,
            )
            yield from page
            token = page.token
            if not token:
                break


def forget(uri: str) -> None:
    """Forget that this process prepared the store at ``uri`` (it was deleted or replaced:
    the next ``connect`` prepares it again)."""
    _prepared.discard(uri)
