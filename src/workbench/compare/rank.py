"""The best run and a ranking by one metric that flags runs within noise of the best."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd

from workbench.compare.errors import CompareError
from workbench.compare.table import runs_frame

Mode = Literal["max", "min"]


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


def by_metric(frame: pd.DataFrame, col: str, mode: Mode) -> pd.DataFrame:
    """The runs that have ``col``, best first; shared by ranking and the history overlay."""
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
    ordered = by_metric(frame, col, mode)
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
    ordered = by_metric(frame, col, mode)
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
