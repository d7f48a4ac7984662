"""Compare runs: one tidy table, the best run, overlays, parallel coordinates, diffs, noise.

``runs_frame(["churn-gbm"])`` returns the runs of one or several experiments as one pandas
DataFrame: ``run_id, run_name, experiment, experiment_id, status, start_time, end_time,
duration_s, parent_run_id, is_child``, then ``metrics.<m>``, ``params.<p>`` (typed back to
int, float or bool where every value is one) and ``tags.<t>``. It reads any run, also runs
written by plain MLflow code without workbench tags. Filter strings and ``order_by`` are
MLflow's own and mean what they mean in ``mlflow.search_runs``.

On the embedded SQLite store the table is read directly with one SQL query per table, much
faster than ``mlflow.search_runs`` for thousands of runs; any other store goes through the
MLflow API (``engine="api"``); both give the same frame (tests/compare checks it).

This module is the public API; the work is done in ``compare_table`` (the runs table),
``compare_sql`` (the direct SQLite reader), ``compare_rank`` (best run, ranking) and
``compare_plots`` (figures). Diffs, logging a comparison and quick runs for a fresh store
live here.

Example::

    runs = runs_frame("churn-quick", filter_string="metrics.val_roc_auc > 0.7")
    best = best_run(runs, "val_roc_auc")
    table = ranking(runs, "cv_roc_auc_mean")          # flags runs within noise of the best
    fig = history_overlay(runs, "val_roc_auc", k=3)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workbench.compare.errors import CompareError
from workbench.compare.plots import history_overlay, metric_histories, parallel_coordinates
from workbench.compare.rank import (
    Mode,
    best_run,
    metric_column,
    metric_names,
    ranking,
    spread_column,
)
from workbench.compare.table import (
    BASE_COLUMNS,
    FILTER_EXAMPLE,
    ORDER_BY_EXAMPLE,
    PARENT_TAG,
    Engine,
    experiment_ids,
    list_experiments,
    runs_frame,
    typed_param,
)
from workbench.core import store

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

__all__ = [
    "BASE_COLUMNS",
    "FILTER_EXAMPLE",
    "ORDER_BY_EXAMPLE",
    "PARENT_TAG",
    "CompareError",
    "Engine",
    "Mode",
    "best_run",
    "diff_runs",
    "ensure_runs",
    "experiment_ids",
    "history_overlay",
    "list_experiments",
    "log_comparison",
    "metric_column",
    "metric_histories",
    "metric_names",
    "parallel_coordinates",
    "ranking",
    "runs_frame",
    "spread_column",
    "typed_param",
]


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

    client = client or store.connect()
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

    client = store.connect()
    exp_id = store.experiment_id(experiment)
    have = len(client.search_runs([exp_id], max_results=min_runs))
    if have >= min_runs:
        return 0
    variants = _variants()[: min_runs - have]
    from workbench.tracking.data import load_dataset, make_preprocessor

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
    from workbench.tracking.evaluation import evaluate_classifier

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
