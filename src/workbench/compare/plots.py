"""Figures comparing runs: metric histories overlaid, parallel coordinates of parameters.

matplotlib is imported when a figure is drawn, not with the module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.compare.errors import CompareError
from workbench.compare.rank import Mode, by_metric, metric_column
from workbench.core import store

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient


def metric_histories(
    run_ids: Iterable[str], metric: str, client: MlflowClient | None = None
) -> pd.DataFrame:
    """Every logged step of ``metric`` for each run: columns run_id, step, value, timestamp."""
    client = client or store.connect()
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
        ordered = by_metric(frame, metric_column(frame, rank_by or metric), mode)
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
