"""Every use of MLflow's private names, fenced in one place (tests/test_compat.py guards them).

Each function says which private thing it reaches for, the public behaviour it stands in for,
and what breaks when MLflow changes it. Nothing here imports MLflow at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

# The modules whose ``SqlAlchemyStore`` class caches one SQLAlchemy engine per database URL.
ENGINE_CACHE_MODULES = (
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)


class MlflowChangedError(RuntimeError):
    """A private MLflow name this package relies on is gone or changed shape."""


def _version() -> str:
    import mlflow

    return f"MLflow {mlflow.__version__}"


def tracking_store(tracking_uri: str):
    """MLflow's own cached tracking store for ``tracking_uri`` (``_get_store``).

    ``MlflowClient`` talks to this very store object, so reading through it shares the
    client's SQLAlchemy engine and connection pool instead of opening a second one (and
    migrating the schema again). If MLflow renames or moves
    ``mlflow.tracking._tracking_service.utils._get_store``, this raises ImportError and the
    fast SQL reader of ``compare`` falls back to the MLflow API (slower, same result).
    """
    from mlflow.tracking._tracking_service.utils import _get_store

    return _get_store(tracking_uri)


def orderby_clauses(order_by: list[str], session) -> tuple[list, list, list]:
    """(select cases, ordering, joins) for ``order_by``, as MLflow's SQL store builds them.

    Wraps ``sqlalchemy_store._get_orderby_clauses``, the helper behind
    ``SqlAlchemyStore.search_runs``; it gives the same ordering, NULL placement included, as
    ``mlflow.search_runs``. If its signature or its three-part result changes, ``compare``
    filters on datasets break (tests/test_compat.py says so first).
    """
    from mlflow.store.tracking import sqlalchemy_store as sas

    cases, ordering, joins = sas._get_orderby_clauses(order_by, session)
    return cases, ordering, joins


def filter_clauses(store: SqlAlchemyStore, parsed: list[dict], session) -> tuple[list, list, list]:
    """(attribute filters, metric/param/tag subqueries, dataset subqueries) for ``parsed``.

    Wraps ``sqlalchemy_store._get_sqlalchemy_filter_clauses`` with the store's
    ``_get_dialect()``: the filter semantics of ``mlflow.search_runs`` on a SQL store,
    dataset clauses (joins over run inputs) included. If either private name changes,
    ``compare`` filters on datasets break.
    """
    from mlflow.store.tracking import sqlalchemy_store as sas

    attr, non_attr, datasets = sas._get_sqlalchemy_filter_clauses(
        parsed, session, store._get_dialect()
    )
    return attr, non_attr, datasets


def cached_engines() -> list[Any]:
    """The SQLAlchemy engines MLflow's SQL stores cache, for the store modules loaded so far.

    ``SqlAlchemyStore._engine_map`` (tracking and registry) holds one engine per database
    URL for the life of the process. A forked worker must give those engines fresh
    connection pools (SQLAlchemy's advice for fork) or it shares the parent's sockets. A
    module not imported yet has cached nothing; a loaded module without the map raises
    ``MlflowChangedError``, since silently skipping it would share connections across fork.
    """
    import sys

    engines: list[Any] = []
    for name in ENGINE_CACHE_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        engine_map = getattr(getattr(module, "SqlAlchemyStore", None), "_engine_map", None)
        if not isinstance(engine_map, dict):
            raise MlflowChangedError(
                f"{_version()}: {name}.SqlAlchemyStore._engine_map is missing or not a dict, so "
                "forked batch workers cannot reset the store's inherited connections; update "
                "workbench.core.mlflow_compat.cached_engines for this MLflow version"
            )
        engines.extend(engine_map.values())
    return engines


def set_dataset_schema(dataset, sample: pd.DataFrame) -> None:
    """Give an MLflow ``PandasDataset`` the schema inferred from ``sample`` (its first rows).

    ``PandasDataset.schema`` is a ``functools.cached_property`` that runs the private
    ``mlflow.types.utils._infer_schema`` over every value of the whole table (seconds for a
    large one); the first rows give the same column types. Setting the instance attribute
    fills that cache. If ``schema`` stops being a cached property the assignment is ignored
    or refused, and if ``_infer_schema`` moves this raises ImportError.
    """
    from mlflow.types.utils import _infer_schema

    dataset.__dict__["schema"] = _infer_schema(sample)


def start_run_homes(mlflow_module) -> list[Any]:
    """The modules whose ``start_run`` attribute MLflow's fluent code calls at run time.

    ``mlflow.start_run`` (public) is what notebooks and autologging's managed runs call
    (``mlflow.start_run(tags=...)``, looked up on the package each time). But ``mlflow.log_*``
    with no active run starts one through ``mlflow.tracking.fluent._get_or_start_run``, which
    calls the *module-level* ``start_run`` of the module defining it. Replacing the attribute
    in both places routes every fluent run start through one function
    (``tracking.handover``). If MLflow moves the implicit start elsewhere, ``mlflow.log_param``
    without a run would bypass the replacement: tests/test_compat.py checks that it does not.
    """
    import sys

    home = sys.modules.get(getattr(mlflow_module.start_run, "__module__", ""), None)
    homes = [mlflow_module]
    if home is not None and home is not mlflow_module:
        homes.append(home)
    return homes


def forget_active_experiment() -> None:
    """Forget the experiment ``mlflow.set_experiment`` made current in this process
    (``mlflow.tracking.fluent._active_experiment_id``, and the ``MLFLOW_EXPERIMENT_ID`` it
    exports): for code that hosts several independent sessions one after another, such as
    a test suite. MLflow has no public call for it."""
    import os

    from mlflow.tracking import fluent

    if not hasattr(fluent, "_active_experiment_id"):
        raise MlflowChangedError(
            f"MLflow {_version()} has no mlflow.tracking.fluent._active_experiment_id: "
            "update workbench.core.mlflow_compat.forget_active_experiment"
        )
    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
