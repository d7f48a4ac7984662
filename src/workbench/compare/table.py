"""The runs table: the runs of one or several experiments as one tidy pandas DataFrame.

``runs_frame`` reads the embedded SQLite store directly (``workbench.compare_sql``) or goes
through the MLflow API; both readers return long tables that ``_assemble`` pivots into the
same frame. See ``workbench.compare`` for the columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from workbench.compare.errors import CompareError
from workbench.compare.sql import read_sql, sqlite_store
from workbench.core import store

if TYPE_CHECKING:
    from mlflow import MlflowClient

Engine = Literal["auto", "sql", "api"]

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


def list_experiments(client: MlflowClient | None = None) -> list[str]:
    """Names of the active experiments in the store."""
    client = client or store.connect()
    return sorted(e.name for e in store.iter_experiments(client))


def experiment_ids(
    names: str | Iterable[str], client: MlflowClient | None = None
) -> dict[str, str]:
    """Map experiment names to ids; an unknown name raises naming the ones that exist."""
    client = client or store.connect()
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

    client = client or store.connect()
    exp_names = experiment_ids(experiments, client)
    order_by = [order_by] if isinstance(order_by, str) else list(order_by or [])
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    sql_store = sqlite_store(client) if engine in ("auto", "sql") else None
    if engine == "sql" and sql_store is None:
        raise CompareError(
            f"engine='sql' needs an embedded SQLite store, not {client.tracking_uri}"
        )
    try:
        if sql_store is not None:
            parts = read_sql(sql_store, list(exp_names), filter_string, order_by, view)
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


# The same tables as compare_sql.read_sql, through the MLflow API: works with any store.


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
