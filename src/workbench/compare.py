"""Compare runs: one tidy table, the best run, overlays, parallel coordinates, diffs, noise.

``runs_frame(["churn-gbm"])`` returns the runs of one or several experiments as one pandas
DataFrame: ``run_id, run_name, experiment, experiment_id, status, start_time, end_time,
duration_s, parent_run_id, is_child``, then ``metrics.<m>``, ``params.<p>`` (typed back to
int, float or bool where every value is one) and ``tags.<t>``. It reads any run, also runs
written by plain MLflow code without workbench tags. Filter strings and ``order_by`` are
MLflow's own and mean what they mean in ``mlflow.search_runs``.

Why not just ``mlflow.search_runs``: it pages 1,000 runs at a time and builds an entity per
run, which takes many seconds for 10,000 runs. On the embedded SQLite store we let MLflow's
own SQL filter and ordering pick the run ids (one query, the same semantics) and read
runs, latest metrics, params and tags with one SQL query each. Any other store goes through
the MLflow API (``engine="api"``); both give the same frame (tests/compare checks it).

Example::

    runs = runs_frame("churn-quick", filter_string="metrics.val_roc_auc > 0.7")
    best = best_run(runs, "val_roc_auc")
    table = ranking(runs, "cv_roc_auc_mean")          # flags runs within noise of the best
    fig = history_overlay(runs, "val_roc_auc", k=3)
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

Engine = Literal["auto", "sql", "api"]
Mode = Literal["max", "min"]

BASE_COLUMNS = [
    "run_id",
    "run_name",
    "experiment",
    "experiment_id",
    "status",
    "start_time",
    "end_time",
    "duration_s",
    "parent_run_id",
    "is_child",
]
PARENT_TAG = "mlflow.parentRunId"
FILTER_EXAMPLE = (
    "metrics.val_roc_auc > 0.8 and params.model = 'gbm' and tags.`mlflow.runName` LIKE 'gbm%'"
    " (clauses joined with AND, strings in single quotes, names with dots in backticks)"
)
ORDER_BY_EXAMPLE = "['metrics.val_roc_auc DESC', 'start_time ASC']"
_MISSING = {"", "none", "null"}


class CompareError(ValueError):
    """The comparison cannot be made as asked; the message names what exists."""


# ------------------------------------------------------------------ the runs table


def _client() -> MlflowClient:
    from workbench import store

    return store.connect()


def list_experiments(client: MlflowClient | None = None) -> list[str]:
    """Names of the active experiments in the store."""
    client = client or _client()
    return sorted(e.name for e in client.search_experiments())


def experiment_ids(
    names: str | Iterable[str], client: MlflowClient | None = None
) -> dict[str, str]:
    """Map experiment names to ids; an unknown name raises naming the ones that exist."""
    client = client or _client()
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise CompareError("no experiment given: pass one or more experiment names")
    found: dict[str, str] = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            existing = list_experiments(client)
            raise CompareError(
                f"experiment {name!r} does not exist in {client.tracking_uri}. "
                f"Existing experiments: {', '.join(existing) or '(none)'}"
            )
        found[exp.experiment_id] = name
    return found


def runs_frame(
    experiments: str | Iterable[str],
    filter_string: str = "",
    order_by: Sequence[str] | str | None = None,
    *,
    include_deleted: bool = False,
    engine: Engine = "auto",
    client: MlflowClient | None = None,
) -> pd.DataFrame:
    """The runs of ``experiments`` (names) as one tidy DataFrame (see module docstring).

    ``engine``: ``"sql"`` reads the embedded SQLite store directly, ``"api"`` goes through
    ``MlflowClient.search_runs``, ``"auto"`` picks ``sql`` when the store allows it.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client = client or _client()
    exp_names = experiment_ids(experiments, client)
    order_by = [order_by] if isinstance(order_by, str) else list(order_by or [])
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    sql_store = _sqlite_store(client) if engine in ("auto", "sql") else None
    if engine == "sql" and sql_store is None:
        raise CompareError(
            f"engine='sql' needs an embedded SQLite store, not {client.tracking_uri}"
        )
    try:
        if sql_store is not None:
            parts = _read_sql(sql_store, list(exp_names), filter_string, order_by, view)
        else:
            parts = _read_api(client, list(exp_names), filter_string, order_by, view)
    except MlflowException as exc:
        raise _search_error(exc, filter_string, order_by) from exc
    frame = _assemble(*parts, exp_names)
    _check_order_metrics(order_by, parts[4])
    return frame


def _search_error(exc: Exception, filter_string: str, order_by: list[str]) -> CompareError:
    msg = getattr(exc, "message", str(exc))
    return CompareError(
        f"MLflow rejected the search (filter_string={filter_string!r}, order_by={order_by!r}): "
        f"{msg}\nValid filter example: {FILTER_EXAMPLE}\nValid order_by example: {ORDER_BY_EXAMPLE}"
    )


def _check_order_metrics(order_by: list[str], metric_keys: Iterable[str]) -> None:
    from mlflow.utils.search_utils import SearchUtils

    known = sorted(set(metric_keys))
    for clause in order_by:
        key_type, key, _ = SearchUtils.parse_order_by_for_search_runs(clause)
        if key_type == "metric" and key not in known:
            raise CompareError(
                f"order_by names metric {key!r}, which no run of these experiments logged. "
                f"Metrics that exist: {', '.join(known) or '(none)'}"
            )


def _sqlite_store(client: MlflowClient):
    """The SQLAlchemy store behind ``client`` when it is SQLite, else None."""
    if not client.tracking_uri.startswith("sqlite:"):
        return None
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _get_store
    except ImportError:
        return None
    store = _get_store(client.tracking_uri)
    return store if isinstance(store, SqlAlchemyStore) else None


# Each reader returns (runs, metrics, params, tags, metric_keys): runs has one row per run in
# result order; metrics/params/tags are long tables (run_id, key, value[, is_nan]);
# metric_keys are all metric names in the experiments, for error messages.


def _read_sql(store, exp_ids: list[str], filter_string: str, order_by: list[str], view):
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
    from mlflow.store.tracking import sqlalchemy_store as sas
    from mlflow.store.tracking.dbmodels.models import SqlRun
    from sqlalchemy import select

    cases, ordering, sort_joins = sas._get_orderby_clauses(order_by, session)
    attr, non_attr, ds_filters = sas._get_sqlalchemy_filter_clauses(
        parsed, session, store._get_dialect()
    )
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
    from mlflow.utils.search_utils import SearchUtils as su

    keep = pd.Series(True, index=runs["run_id"].to_numpy())
    for clause in parsed:
        kind, comp = clause["type"], clause["comparator"].upper()
        key, value = su.translate_key_alias(clause["key"]), clause["value"]
        if su.is_attribute(kind, key, comp) and key != "run_name":
            column = runs.set_index("run_id")["run_id" if key == "run_id" else key]
            if key in su.NUMERIC_ATTRIBUTES or key in ("start_time", "end_time"):
                column, value = pd.to_numeric(column, errors="coerce"), int(value)
            match = _compare(column, comp, value)
            keep &= match.reindex(keep.index, fill_value=False).to_numpy()
            continue
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
            has = keep.index.isin(rows["run_id"])
            keep &= ~has if comp == "IS NULL" else has
            continue
        match = _compare(rows["value"], comp, value)
        if table is metrics:  # NaN is stored as 0 with is_nan: only "!=" matches it
            match = (match & ~rows["is_nan"]) | (rows["is_nan"] & (comp == "!="))
        keep &= keep.index.isin(rows.loc[match.to_numpy(), "run_id"])
    chosen = runs[keep.to_numpy()]

    frame = pd.DataFrame({"run_id": chosen["run_id"].to_numpy()})
    start = pd.to_numeric(chosen["start_time"], errors="coerce").to_numpy()
    cols, asc, seen = [], [], set()
    for i, (kind, key, ascending) in enumerate(sorts):
        key = su.translate_key_alias(key)
        if (kind, key) in seen:
            raise CompareError(f"order_by names {kind} {key!r} twice: {sorts}")
        seen.add((kind, key))
        if kind == "attribute":
            name = {"run_id": "run_id", "run_name": "run_name"}.get(key, key)
            vals = chosen[name].reset_index(drop=True)
            flag = vals.isna().astype(int)
        else:
            table = {"metric": metrics, "parameter": params, "tag": tags}[kind]
            rows = table[table["key"] == key].set_index("run_id")
            vals = rows["value"].reindex(frame["run_id"]).reset_index(drop=True)
            flag = vals.isna().astype(int)
            if kind == "metric":
                nan = rows["is_nan"].reindex(frame["run_id"]).fillna(False).astype(bool).to_numpy()
                flag = flag * 2 + nan.astype(int)  # MLflow: value 0, NaN 1, missing 2
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


def _read_api(
    client: MlflowClient, exp_ids: list[str], filter_string: str, order_by: list[str], view
):
    run_rows, m_rows, p_rows, t_rows = [], [], [], []
    token = None
    while True:
        page = client.search_runs(exp_ids, filter_string, view, 1000, order_by or None, token)
        for run in page:
            info, data = run.info, run.data
            run_rows.append(
                (
                    info.run_id,
                    info.run_name,
                    info.experiment_id,
                    info.status,
                    info.start_time,
                    info.end_time,
                )
            )
            m_rows += [
                (info.run_id, k, v, isinstance(v, float) and math.isnan(v))
                for k, v in data.metrics.items()
            ]
            p_rows += [(info.run_id, k, v) for k, v in data.params.items()]
            t_rows += [(info.run_id, k, v) for k, v in data.tags.items()]
        token = page.token
        if not token:
            break
    columns = ["run_id", "run_name", "experiment_id", "status", "start_time", "end_time"]
    runs = pd.DataFrame(run_rows, columns=columns)
    metrics = pd.DataFrame(m_rows, columns=["run_id", "key", "value", "is_nan"])
    params = pd.DataFrame(p_rows, columns=["run_id", "key", "value"])
    tags = pd.DataFrame(t_rows, columns=["run_id", "key", "value"])
    metric_keys = metrics["key"].unique().tolist()
    if order_by and any(k.startswith(("metric", "metrics")) for k in order_by):
        # A filter may hide the runs that logged the metric: ask the store for all keys.
        everything = client.search_runs(exp_ids, "", view, 1000)
        metric_keys = sorted({*metric_keys, *(k for r in everything for k in r.data.metrics)})
    return runs, metrics, params, tags, metric_keys


def _wide(long: pd.DataFrame, prefix: str, index: pd.Index) -> pd.DataFrame:
    if long.empty:
        return pd.DataFrame(index=index)
    wide = long.pivot(index="run_id", columns="key", values="value").reindex(index)
    wide = wide[sorted(wide.columns)]
    wide.columns = [f"{prefix}{c}" for c in wide.columns]
    wide.columns.name = None
    return wide


def _assemble(runs, metrics, params, tags, _keys, exp_names: Mapping[str, str]) -> pd.DataFrame:
    index = pd.Index(runs["run_id"].astype(str), name="run_id")
    base = pd.DataFrame(index=index)
    base["run_name"] = runs["run_name"].to_numpy(dtype=object)
    base["experiment_id"] = runs["experiment_id"].astype(str).to_numpy()
    base["experiment"] = base["experiment_id"].map(dict(exp_names))
    base["status"] = runs["status"].to_numpy(dtype=object)
    start = pd.to_numeric(runs["start_time"], errors="coerce").astype("float64").to_numpy()
    end = pd.to_numeric(runs["end_time"], errors="coerce").astype("float64").to_numpy()
    base["start_time"] = pd.to_datetime(start, unit="ms", utc=True)
    base["end_time"] = pd.to_datetime(end, unit="ms", utc=True)
    base["duration_s"] = (end - start) / 1000.0
    parents = tags[tags["key"] == PARENT_TAG].set_index("run_id")["value"]
    base["parent_run_id"] = parents.reindex(index).to_numpy(dtype=object)
    base["is_child"] = base["parent_run_id"].notna()

    metrics = metrics.assign(
        value=np.where(metrics["is_nan"].astype(bool), np.nan, metrics["value"].astype(float))
    )
    m = _wide(metrics[["run_id", "key", "value"]], "metrics.", index).astype("float64")
    p = _wide(params, "params.", index)
    p = p.apply(typed_param) if not p.empty else p
    t = _wide(tags, "tags.", index)
    frame = pd.concat([base, m, p, t], axis=1).reset_index()
    for col in ("run_name", "status", "parent_run_id", *t.columns):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame[[*BASE_COLUMNS, *m.columns, *p.columns, *t.columns]]


def typed_param(values: pd.Series) -> pd.Series:
    """A column of parameter strings as bool, int or float when every value is one
    (``""``/``None`` count as missing), else unchanged. Nullable dtypes keep the gaps."""
    present = values.dropna().astype(str)
    present = present[~present.str.strip().str.lower().isin(_MISSING)]
    if present.empty:
        return values.astype(object)
    missing = len(present) < len(values)
    low = present.str.strip().str.lower()
    if low.isin(["true", "false"]).all():
        out = pd.Series(pd.NA, index=values.index, dtype="boolean")
        out[present.index] = (low == "true").to_numpy()
        return out if missing else out.astype(bool)
    if present.str.fullmatch(r"\s*[+-]?\d+\s*").all():
        nums = pd.to_numeric(present)
        out = pd.Series(pd.NA, index=values.index, dtype="Int64")
        out[present.index] = nums.to_numpy()
        return out if missing else out.astype("int64")
    nums = pd.to_numeric(present, errors="coerce")
    if nums.notna().all():
        return pd.Series(np.nan, index=values.index, dtype="float64").fillna(nums)
    return values.astype(object).where(values.notna(), None)


# ------------------------------------------------------------------ best run and ranking


def metric_column(frame: pd.DataFrame, metric: str) -> str:
    """``metrics.<metric>``; raises naming the metrics the frame has when it is absent."""
    col = metric if metric.startswith("metrics.") else f"metrics.{metric}"
    if col not in frame.columns:
        raise CompareError(
            f"no run here logged metric {metric!r}. Metrics that exist: "
            + (", ".join(metric_names(frame)) or "(none)")
        )
    return col


def metric_names(frame: pd.DataFrame) -> list[str]:
    return [c[len("metrics.") :] for c in frame.columns if c.startswith("metrics.")]


def _ordered(frame: pd.DataFrame, col: str, mode: Mode) -> pd.DataFrame:
    if mode not in ("max", "min"):
        raise CompareError(f"mode must be 'max' or 'min', not {mode!r}")
    have = frame[frame[col].notna()]
    # Ties go to the run that started first, then to the smaller run id: deterministic.
    return have.sort_values(
        [col, "start_time", "run_id"],
        ascending=[mode == "min", True, True],
        kind="mergesort",
        na_position="last",
    )


def best_run(
    runs: pd.DataFrame | str | Iterable[str], metric: str, mode: Mode = "max"
) -> pd.Series:
    """The best run by ``metric`` (a row of the runs table). Runs without the metric are
    ignored; ties go to the earliest start. ``runs`` is a runs table or experiment name(s)."""
    frame = runs if isinstance(runs, pd.DataFrame) else runs_frame(runs)
    col = metric_column(frame, metric)
    ordered = _ordered(frame, col, mode)
    if ordered.empty:
        raise CompareError(f"none of the {len(frame)} runs has a value for {metric!r}")
    return ordered.iloc[0]


def spread_column(frame: pd.DataFrame, metric: str) -> str | None:
    """The column holding the spread (std) of ``metric`` if the runs logged one:
    ``cv_roc_auc_mean`` -> ``cv_roc_auc_std``, ``roc_auc`` -> ``roc_auc_std``."""
    name = metric.removeprefix("metrics.")
    candidates = [f"{name}_std"]
    if name.endswith("_mean"):
        candidates.insert(0, name[: -len("_mean")] + "_std")
    if "mean" in name:
        candidates.append(name.replace("mean", "std"))
    for cand in candidates:
        if f"metrics.{cand}" in frame.columns:
            return f"metrics.{cand}"
    return None


def ranking(
    frame: pd.DataFrame,
    metric: str,
    mode: Mode = "max",
    *,
    std: str | None = None,
    n_sigma: float = 1.0,
) -> pd.DataFrame:
    """Runs ranked by ``metric`` with its cross-validation spread where logged.

    ``gap`` is how far each run is behind the best; ``noise`` is
    ``n_sigma * sqrt(std_best**2 + std_run**2)``, the spread of a difference of two noisy
    estimates; ``within_noise`` marks runs whose gap is not larger than that, i.e. runs the
    data cannot tell apart from the best. Without a spread column both stay empty/False.
    """
    col = metric_column(frame, metric)
    std_col = (
        std if std is None or std.startswith("metrics.") else f"metrics.{std}"
    ) or spread_column(frame, col)
    ordered = _ordered(frame, col, mode)
    if ordered.empty:
        raise CompareError(f"none of the {len(frame)} runs has a value for {metric!r}")
    out = pd.DataFrame(
        {
            "rank": np.arange(1, len(ordered) + 1),
            "run_id": ordered["run_id"].to_numpy(),
            "run_name": ordered["run_name"].to_numpy(),
            "experiment": ordered["experiment"].to_numpy(),
            col.removeprefix("metrics."): ordered[col].to_numpy(dtype=float),
        }
    )
    values = out[col.removeprefix("metrics.")]
    sign = 1.0 if mode == "max" else -1.0
    out["gap"] = sign * (values.iloc[0] - values)
    if std_col is not None and std_col in frame.columns:
        spread = ordered[std_col].to_numpy(dtype=float)
        out["std"] = spread
        best_std = 0.0 if math.isnan(spread[0]) else spread[0]
        noise = n_sigma * np.sqrt(best_std**2 + np.nan_to_num(spread) ** 2)
        out["noise"] = np.where(np.isnan(spread), np.nan, noise)
        out["within_noise"] = (out["gap"] <= out["noise"]).fillna(False).astype(bool)
    else:
        out["std"] = np.nan
        out["noise"] = np.nan
        out["within_noise"] = False
    return out


# ------------------------------------------------------------------ diffs


def diff_runs(
    frame: pd.DataFrame, run_a: str, run_b: str, *, include_tags: bool = False
) -> pd.DataFrame:
    """What differs between two runs: one row per param/metric (and tag, if asked) whose
    values differ, with both values and, for numbers, ``b - a``."""
    rows = frame.set_index("run_id")
    for rid in (run_a, run_b):
        if rid not in rows.index:
            raise CompareError(f"run {rid!r} is not in this runs table ({len(rows)} runs)")
    prefixes = ("params.", "metrics.", *(("tags.",) if include_tags else ()))
    out = []
    for col in rows.columns:
        if not col.startswith(prefixes):
            continue
        a, b = rows.at[run_a, col], rows.at[run_b, col]
        if _same(a, b):
            continue
        delta = np.nan
        if _is_number(a) and _is_number(b):
            delta = float(b) - float(a)
        kind, _, key = col.partition(".")
        out.append(
            {"kind": kind.rstrip("s"), "key": key, "a": _clean(a), "b": _clean(b), "delta": delta}
        )
    table = pd.DataFrame(out, columns=["kind", "key", "a", "b", "delta"])
    table.attrs["runs"] = (run_a, run_b)
    return table


def _clean(v: Any) -> Any:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v


def _same(a: Any, b: Any) -> bool:
    a, b = _clean(a), _clean(b)
    if a is None or b is None:
        return a is None and b is None
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return a == b


def _is_number(v: Any) -> bool:
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, (bool, np.bool_))
        and not pd.isna(v)
    )


# ------------------------------------------------------------------ figures


def metric_histories(
    run_ids: Iterable[str], metric: str, client: MlflowClient | None = None
) -> pd.DataFrame:
    """Every logged step of ``metric`` for each run: columns run_id, step, value, timestamp."""
    client = client or _client()
    key = metric.removeprefix("metrics.")
    rows = [
        (rid, m.step, m.value, m.timestamp)
        for rid in run_ids
        for m in client.get_metric_history(rid, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "step", "value", "timestamp"]).sort_values(
        ["run_id", "step"], kind="mergesort"
    )


def _labels(frame: pd.DataFrame) -> dict[str, str]:
    return {
        r.run_id: f"{r.run_name or r.run_id[:8]} ({r.run_id[:6]})"
        for r in frame[["run_id", "run_name"]].itertuples()
    }


def history_overlay(
    frame: pd.DataFrame,
    metric: str,
    *,
    rank_by: str | None = None,
    k: int = 5,
    mode: Mode = "max",
    run_ids: Sequence[str] | None = None,
    client: MlflowClient | None = None,
) -> Figure:
    """One figure with the history of ``metric`` for the top ``k`` runs by ``rank_by``
    (default: ``metric`` itself), or for the given ``run_ids``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    key = metric.removeprefix("metrics.")
    if run_ids is None:
        ordered = _ordered(frame, metric_column(frame, rank_by or metric), mode)
        run_ids = ordered["run_id"].head(k).tolist()
    hist = metric_histories(run_ids, key, client)
    labels = _labels(frame)
    fig = Figure(figsize=(7, 3.8), dpi=90)
    ax = fig.subplots()
    for rid in run_ids:
        h = hist[hist["run_id"] == rid]
        if h.empty:
            continue
        style = {"marker": "o"} if len(h) == 1 else {"lw": 1.6}
        ax.plot(h["step"], h["value"], label=labels.get(rid, rid[:8]), **style)
    if hist.empty:
        ax.text(
            0.5,
            0.5,
            f"no history of {key!r} for these runs",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.legend(fontsize=7, loc="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel=key, title=f"{key}: history of {len(run_ids)} run(s)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def parallel_coordinates(
    frame: pd.DataFrame, metric: str, params: Sequence[str] | None = None, *, max_params: int = 8
) -> Figure:
    """Parallel coordinates of parameters against ``metric``: each axis scaled to [0, 1]
    (categories spaced evenly), one line per run coloured by the metric."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    col = metric_column(frame, metric)
    data = frame[frame[col].notna()]
    if params is None:
        params = [
            c for c in data.columns if c.startswith("params.") and data[c].nunique(dropna=True) > 1
        ]
        params = params[:max_params]
    else:
        params = [p if p.startswith("params.") else f"params.{p}" for p in params]
        missing = [p for p in params if p not in data.columns]
        if missing:
            have = [c.removeprefix("params.") for c in frame.columns if c.startswith("params.")]
            raise CompareError(
                f"unknown parameter(s) {missing}; parameters that exist: {', '.join(have)}"
            )
    axes_cols = [*params, col]
    scaled, ticks = {}, {}
    na_level = -0.22  # runs without a value for a parameter pass through this level
    for c in axes_cols:
        s = data[c]
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        if numeric:
            v = s.astype("float64")
            lo, hi = (
                float(np.nanmin(v)) if v.notna().any() else 0.0,
                float(np.nanmax(v)) if v.notna().any() else 1.0,
            )
            scaled[c] = (v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5
            ticks[c] = [(0.0, f"{lo:.4g}"), (1.0, f"{hi:.4g}")] if hi > lo else [(0.5, f"{lo:.4g}")]
        else:
            cats = sorted(s.dropna().astype(str).unique())
            pos = {
                cat: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, cat in enumerate(cats)
            }
            scaled[c] = s.astype(str).map(pos).where(s.notna())
            ticks[c] = [(p, cat[:12]) for cat, p in pos.items()]
    fig = Figure(figsize=(max(5, 1.3 * len(axes_cols) + 2), 4), dpi=90)
    ax = fig.subplots()
    values = data[col].astype(float).to_numpy()
    lo, hi = (values.min(), values.max()) if len(values) else (0, 1)
    cmap = colormaps["viridis"]
    xs = np.arange(len(axes_cols))
    for c in axes_cols:
        if scaled[c].isna().any():
            ticks[c] = [*ticks[c], (na_level, "n/a")]
        scaled[c] = scaled[c].astype("float64").fillna(na_level)
    for i in range(len(data)):
        ys = [scaled[c].iloc[i] for c in axes_cols]
        colour = cmap((values[i] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(xs, ys, color=colour, alpha=0.75, lw=1.2)
    for x, c in zip(xs, axes_cols, strict=True):
        ax.vlines(x, na_level - 0.04, 1.02, color="grey", lw=0.8)
        for y, label in ticks[c]:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(xs, [c.split(".", 1)[1] for c in axes_cols], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(na_level - 0.06, 1.05)
    ax.set_title(f"Parameters against {col.removeprefix('metrics.')} ({len(data)} runs)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ logging the comparison


def log_comparison(
    table: pd.DataFrame,
    *,
    figures: Mapping[str, Figure] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
    client: MlflowClient | None = None,
) -> str:
    """Log a comparison as a run: the runs table (CSV and HTML), extra tables and figures
    under ``comparison/``. Logs into ``run_id``, else the active run, else a new run in
    ``experiment``; returns the run id so a report can point to it."""
    import mlflow

    from workbench import store

    client = client or _client()
    created = False
    if run_id is None and mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
    if run_id is None:
        if not experiment:
            raise CompareError("log_comparison needs run_id=, an active run, or experiment=")
        run_id = client.create_run(
            store.experiment_id(experiment), run_name="comparison"
        ).info.run_id
        created = True
    client.log_text(run_id, table.to_csv(index=False), "comparison/runs.csv")
    client.log_text(run_id, table.to_html(index=False, na_rep=""), "comparison/runs.html")
    for name, extra in (tables or {}).items():
        client.log_text(run_id, extra.to_csv(index=False), f"comparison/{name}.csv")
    for name, fig in (figures or {}).items():
        client.log_figure(run_id, fig, f"comparison/{name}.png")
    all_tags = {"workbench.kind": "comparison", "workbench.compare.n_runs": str(len(table))}
    if "experiment" in table.columns:
        all_tags["workbench.compare.experiments"] = ",".join(
            sorted(table["experiment"].dropna().unique())
        )[:5000]
    for key, value in {**all_tags, **(tags or {})}.items():
        client.set_tag(run_id, key, value)
    if created:
        client.set_terminated(run_id)
    return run_id


# ------------------------------------------------------------------ quick runs for a fresh store


def ensure_runs(
    experiment: str,
    *,
    min_runs: int = 6,
    seed: int = 0,
    dataset: str = "churn",
    target: str = "churn",
    n_rows: int = 2000,
) -> int:
    """Make sure ``experiment`` has at least ``min_runs`` runs to compare, training quick
    LogisticRegression and GradientBoosting variants when it has fewer (a few seconds).

    Each run logs its parameters, validation metrics, 3-fold ``cv_roc_auc_mean``/``_std``
    and a ``val_roc_auc`` history. Runs are written with the client (not the fluent API),
    so a notebook's own active run is left alone. Returns how many runs were created.
    """
    from workbench import store

    client = _client()
    exp_id = store.experiment_id(experiment)
    have = len(client.search_runs([exp_id], max_results=min_runs))
    if have >= min_runs:
        return 0
    variants = _variants()[: min_runs - have]
    from workbench.data import load_dataset, make_preprocessor

    ds = (
        load_dataset(dataset, target or None, seed=seed, n_rows=n_rows)
        if dataset == "churn"
        else load_dataset(dataset, target)
    )
    split = ds.split(seed=seed)
    # Preprocess once: the variants differ in the model, not in the preprocessing.
    prep = make_preprocessor(split.X_train).fit(split.X_train)
    data = (prep.transform(split.X_train), split.y_train, prep.transform(split.X_val), split.y_val)
    for algorithm, params in variants:
        _quick_run(client, exp_id, ds, data, algorithm, params, seed)
    return len(variants)


def _variants() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("logreg", {"C": 0.05}),
        ("gbm", {"n_estimators": 30, "learning_rate": 0.1, "max_depth": 2}),
        ("logreg", {"C": 1.0}),
        ("gbm", {"n_estimators": 30, "learning_rate": 0.2, "max_depth": 3}),
        ("logreg", {"C": 0.005}),
        ("gbm", {"n_estimators": 30, "learning_rate": 0.05, "max_depth": 2}),
        ("logreg", {"C": 10.0}),
        ("gbm", {"n_estimators": 30, "learning_rate": 0.3, "max_depth": 2}),
    ]


def _quick_run(
    client, exp_id: str, ds, data, algorithm: str, params: dict[str, Any], seed: int
) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    from workbench import tracking
    from workbench.evaluation import evaluate_classifier

    X_train, y_train, X_val, y_val = data
    if algorithm == "gbm":
        est = GradientBoostingClassifier(random_state=seed, **params)
    else:
        est = LogisticRegression(max_iter=500, **params)
    cv = cross_val_score(est, X_train, y_train, cv=3, scoring="roc_auc")
    history: list[tuple[int, float]] = []
    if algorithm == "gbm":
        est.fit(X_train, y_train)
        for i, prob in enumerate(est.staged_predict_proba(X_val), start=1):
            if i % 5 == 0 or i == params["n_estimators"]:
                history.append((i, float(roc_auc_score(y_val, prob[:, 1]))))
    else:
        # A learning curve for the linear model too: a few solver iterations at a time.
        est.set_params(warm_start=True, max_iter=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning until the last rounds
            for step in range(1, 16):
                est.fit(X_train, y_train)
                history.append(
                    (3 * step, float(roc_auc_score(y_val, est.predict_proba(X_val)[:, 1])))
                )
    metrics = evaluate_classifier(est, X_val, y_val, prefix="val_", log=False)
    metrics |= {"cv_roc_auc_mean": float(cv.mean()), "cv_roc_auc_std": float(cv.std())}
    name = tracking.run_name(algorithm, params)
    tags = {
        "workbench.algorithm": algorithm,
        "workbench.kind": "quick-run",
        "workbench.dataset.name": ds.name,
    }
    run = client.create_run(exp_id, run_name=name, tags=tags)
    rid, ts = run.info.run_id, run.info.start_time
    batch = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if k != "val_roc_auc"]
    batch += [Metric("val_roc_auc", value, ts + step, step) for step, value in history]
    all_params = [Param(k, str(v)) for k, v in {"model": algorithm, "seed": seed, **params}.items()]
    client.log_batch(
        rid, metrics=batch, params=all_params, tags=[RunTag(k, v) for k, v in tags.items()]
    )
    client.set_terminated(rid)
    return rid
