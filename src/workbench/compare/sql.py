"""The fast reader behind ``compare.runs_frame``: the embedded SQLite store read directly.

Why not just ``mlflow.search_runs``: it pages 1,000 runs at a time and builds an entity per
run, which takes many seconds for 10,000 runs. Here runs, latest metrics, params and tags
are read with one SQL query each, and MLflow's filter string and ``order_by`` are applied to
those tables with MLflow's own parser and the semantics of its SQL store (dataset clauses go
through MLflow's own SQL). tests/compare checks the result against the MLflow API.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.compare.errors import CompareError
from workbench.core import mlflow_compat

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient


def sqlite_store(client: MlflowClient):
    """The SQLAlchemy store behind ``client`` when it is SQLite, else None."""
    if not client.tracking_uri.startswith("sqlite:"):
        return None
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = mlflow_compat.tracking_store(client.tracking_uri)
    except ImportError:  # MLflow moved its store cache: the API reader takes over
        return None
    return store if isinstance(store, SqlAlchemyStore) else None


# Both readers (this one and compare_table._read_api) return
# (runs, metrics, params, tags, metric_keys): runs has one row per run in
# result order; metrics/params/tags are long tables (run_id, key, value[, is_nan]);
# metric_keys are all metric names in the experiments, for error messages.


def read_sql(store, exp_ids: list[str], filter_string: str, order_by: list[str], view):
    from mlflow.entities import LifecycleStage
    from mlflow.utils.search_utils import SearchUtils

    parsed = SearchUtils.parse_search_filter(filter_string)  # MLflow's parser and its errors
    sorts = [SearchUtils.parse_order_by_for_search_runs(c) for c in order_by]
    stages = list(LifecycleStage.view_type_to_stages(view))
    ids = ", ".join(str(int(e)) for e in exp_ids)
    where = f"r.experiment_id IN ({ids}) AND r.lifecycle_stage IN ({', '.join(repr(s) for s in stages)})"
    with store.ManagedSessionMaker() as session:
        con = session.connection().connection.driver_connection  # the sqlite3 connection
        runs = pd.read_sql(
            "SELECT r.run_uuid AS run_id, r.name AS run_name, r.experiment_id, r.status, r.start_time, "
            f"r.end_time, r.user_id, r.artifact_uri FROM runs r WHERE {where}",
            con,
        )

        def long(table: str, cols: str) -> pd.DataFrame:
            query = f"SELECT t.run_uuid AS run_id, {cols} FROM {table} t JOIN runs r ON r.run_uuid = t.run_uuid WHERE {where}"
            return pd.read_sql(query, con)

        metrics = long("latest_metrics", "t.key, t.value, t.is_nan")
        params = long("params", "t.key, t.value")
        tags = long("tags", "t.key, t.value")
        metrics["is_nan"] = metrics["is_nan"].astype(bool)
        if any(c["type"] == "dataset" for c in parsed):
            # Dataset clauses need MLflow's joins over inputs: let its SQL pick the ids.
            order = _mlflow_sql_ids(store, session, exp_ids, parsed, order_by, stages)
        else:
            order = _filter_and_sort(runs, metrics, params, tags, parsed, sorts)
    metric_keys = metrics["key"].unique().tolist()
    if len(order) < len(runs):
        keep = pd.Index(order, dtype=object)
        metrics, params, tags = (
            t[t["run_id"].astype(object).isin(keep)] for t in (metrics, params, tags)
        )
    runs = runs.set_index("run_id").loc[order].reset_index()
    return runs, metrics, params, tags, metric_keys


def _mlflow_sql_ids(store, session, exp_ids, parsed, order_by, stages) -> list[str]:
    """Run ids in order, selected with MLflow's own SQL filter and ordering clauses."""
    from mlflow.store.tracking.dbmodels.models import SqlRun
    from sqlalchemy import select

    cases, ordering, sort_joins = mlflow_compat.orderby_clauses(order_by, session)
    attr, non_attr, ds_filters = mlflow_compat.filter_clauses(store, parsed, session)
    stmt = select(SqlRun.run_uuid, SqlRun.start_time, *cases)
    for sub in non_attr:
        stmt = stmt.join(sub)
    for sub in ds_filters:
        stmt = stmt.join(sub, SqlRun.run_uuid == sub.c.destination_id)
    for sub in sort_joins:
        stmt = stmt.outerjoin(sub)
    stmt = (
        stmt.distinct()
        .filter(
            SqlRun.experiment_id.in_([int(e) for e in exp_ids]),
            SqlRun.lifecycle_stage.in_(stages),
            *attr,
        )
        .order_by(*ordering)
    )
    return [row[0] for row in session.execute(stmt)]


def _like(pattern: str, ignore_case: bool) -> re.Pattern:
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(values: pd.Series, comparator: str, value: Any) -> pd.Series:
    """``values <comparator> value`` with SQL semantics: a missing left side never matches."""
    if comparator in ("LIKE", "ILIKE"):
        rx = _like(str(value), comparator == "ILIKE")
        out = values.map(
            lambda v: v is not None and isinstance(v, str) and rx.fullmatch(v) is not None
        )
    elif comparator in ("IN", "NOT IN"):
        inside = values.isin(list(value))
        out = inside if comparator == "IN" else ~inside
    else:
        ops = {"=": "eq", "!=": "ne", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}
        out = getattr(values, ops[comparator])(value)
    return out.fillna(False).astype(bool) & values.notna()


def _filter_and_sort(runs, metrics, params, tags, parsed, sorts) -> list[str]:
    """Apply MLflow filter clauses and order_by to the runs, as its SQL store does."""
    keep = pd.Series(True, index=runs["run_id"].to_numpy())
    for clause in parsed:
        keep &= _clause_match(clause, keep.index, runs, metrics, params, tags)
    return _sorted_ids(runs[keep.to_numpy()], metrics, params, tags, sorts)


def _clause_match(clause, run_ids: pd.Index, runs, metrics, params, tags) -> np.ndarray:
    """Which of ``run_ids`` one parsed filter clause keeps (a boolean array)."""
    from mlflow.utils.search_utils import SearchUtils as su

    kind, comp = clause["type"], clause["comparator"].upper()
    key, value = su.translate_key_alias(clause["key"]), clause["value"]
    if su.is_attribute(kind, key, comp) and key != "run_name":
        column = runs.set_index("run_id")["run_id" if key == "run_id" else key]
        if key in su.NUMERIC_ATTRIBUTES or key in ("start_time", "end_time"):
            column, value = pd.to_numeric(column, errors="coerce"), int(value)
        return _compare(column, comp, value).reindex(run_ids, fill_value=False).to_numpy()
    if su.is_attribute(kind, key, comp):  # run_name: MLflow compares the runName tag
        table, key = tags, "mlflow.runName"
    elif su.is_metric(kind, comp):
        table, value = metrics, float(value)
    elif su.is_param(kind, comp):
        table = params
    elif su.is_tag(kind, comp):
        table = tags
    else:
        raise CompareError(f"unsupported filter clause {clause}")
    rows = table[table["key"] == key]
    if comp in ("IS NULL", "IS NOT NULL"):
        has = run_ids.isin(rows["run_id"])
        return ~has if comp == "IS NULL" else has
    match = _compare(rows["value"], comp, value)
    if table is metrics:  # NaN is stored as 0 with is_nan: only "!=" matches it
        match = (match & ~rows["is_nan"]) | (rows["is_nan"] & (comp == "!="))
    return run_ids.isin(rows.loc[match.to_numpy(), "run_id"])


def _sorted_ids(chosen, metrics, params, tags, sorts) -> list[str]:
    """The ids of ``chosen`` in ``order_by`` order, then newest first, then by id (MLflow's)."""
    from mlflow.utils.search_utils import SearchUtils as su

    frame = pd.DataFrame({"run_id": chosen["run_id"].to_numpy()})
    start = pd.to_numeric(chosen["start_time"], errors="coerce").to_numpy()
    cols, asc, seen = [], [], set()
    for i, (kind, key, ascending) in enumerate(sorts):
        key = su.translate_key_alias(key)
        if (kind, key) in seen:
            raise CompareError(f"order_by names {kind} {key!r} twice: {sorts}")
        seen.add((kind, key))
        flag, vals = _sort_key(chosen, frame["run_id"], kind, key, metrics, params, tags)
        numeric = pd.api.types.is_numeric_dtype(vals)
        frame[f"f{i}"] = flag.to_numpy()
        frame[f"v{i}"] = vals.fillna(0 if numeric else "").to_numpy()
        cols += [f"f{i}", f"v{i}"]
        asc += [True, ascending]
    if ("attribute", "start_time") not in seen:
        frame["start"] = start
        cols.append("start")
        asc.append(False)
    cols.append("run_id")
    asc.append(True)
    return frame.sort_values(cols, ascending=asc, kind="mergesort")["run_id"].tolist()


def _sort_key(chosen, run_ids, kind, key, metrics, params, tags) -> tuple[pd.Series, pd.Series]:
    """(NULLs-last flag, value) of one order_by key for each run, in ``run_ids`` order."""
    if kind == "attribute":
        name = {"run_id": "run_id", "run_name": "run_name"}.get(key, key)
        vals = chosen[name].reset_index(drop=True)
        return vals.isna().astype(int), vals
    table = {"metric": metrics, "parameter": params, "tag": tags}[kind]
    rows = table[table["key"] == key].set_index("run_id")
    vals = rows["value"].reindex(run_ids).reset_index(drop=True)
    flag = vals.isna().astype(int)
    if kind == "metric":
        nan = rows["is_nan"].reindex(run_ids).fillna(False).astype(bool).to_numpy()
        flag = flag * 2 + nan.astype(int)  # MLflow: value 0, NaN 1, missing 2
    return flag, vals
