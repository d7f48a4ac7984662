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
    from matplotlib.axes import Axes
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


# Runs without a value for a parameter pass through this level, below each axis.
_NA_LEVEL = -0.22


def parallel_coordinates(
    frame: pd.DataFrame, metric: str, params: Sequence[str] | None = None, *, max_params: int = 8
) -> Figure:
    """Parallel coordinates of parameters against ``metric``: each axis scaled to [0, 1]
    (categories spaced evenly), one line per run coloured by the metric."""
    from matplotlib.figure import Figure

    col = metric_column(frame, metric)
    data = frame[frame[col].notna()]
    axes_cols = [*_param_columns(frame, data, params, max_params), col]
    scaled, ticks = _scaled_axes(data, axes_cols)
    fig = Figure(figsize=(max(5, 1.3 * len(axes_cols) + 2), 4), dpi=90)
    ax = fig.subplots()
    _draw_lines(ax, data[col].astype(float).to_numpy(), axes_cols, scaled)
    _draw_axes(ax, axes_cols, ticks)
    ax.set_title(f"Parameters against {col.removeprefix('metrics.')} ({len(data)} runs)")
    fig.tight_layout()
    return fig


def _param_columns(
    frame: pd.DataFrame, data: pd.DataFrame, params: Sequence[str] | None, max_params: int
) -> list[str]:
    """The ``params.*`` columns to draw: the given ones (all must exist), else the first
    ``max_params`` that vary across the runs."""
    if params is None:
        varying = [
            c for c in data.columns if c.startswith("params.") and data[c].nunique(dropna=True) > 1
        ]
        return varying[:max_params]
    params = [p if p.startswith("params.") else f"params.{p}" for p in params]
    missing = [p for p in params if p not in data.columns]
    if missing:
        have = [c.removeprefix("params.") for c in frame.columns if c.startswith("params.")]
        raise CompareError(
            f"unknown parameter(s) {missing}; parameters that exist: {', '.join(have)}"
        )
    return params


def _scaled_axes(
    data: pd.DataFrame, axes_cols: list[str]
) -> tuple[dict[str, pd.Series], dict[str, list[tuple[float, str]]]]:
    """Each column scaled to [0, 1] (missing values at ``_NA_LEVEL``) and its tick labels."""
    scaled, ticks = {}, {}
    for c in axes_cols:
        scaled[c], ticks[c] = _scale(data[c])
        if scaled[c].isna().any():
            ticks[c] = [*ticks[c], (_NA_LEVEL, "n/a")]
        scaled[c] = scaled[c].astype("float64").fillna(_NA_LEVEL)
    return scaled, ticks


def _scale(s: pd.Series) -> tuple[pd.Series, list[tuple[float, str]]]:
    """Numbers min-max scaled (a constant at 0.5), categories spaced evenly in sorted order;
    missing values stay missing."""
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if numeric:
        v = s.astype("float64")
        lo, hi = (
            float(np.nanmin(v)) if v.notna().any() else 0.0,
            float(np.nanmax(v)) if v.notna().any() else 1.0,
        )
        scaled = (v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5
        ticks = [(0.0, f"{lo:.4g}"), (1.0, f"{hi:.4g}")] if hi > lo else [(0.5, f"{lo:.4g}")]
        return scaled, ticks
    cats = sorted(s.dropna().astype(str).unique())
    pos = {cat: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, cat in enumerate(cats)}
    return s.astype(str).map(pos).where(s.notna()), [(p, cat[:12]) for cat, p in pos.items()]


def _draw_lines(
    ax: Axes, values: np.ndarray, axes_cols: list[str], scaled: dict[str, pd.Series]
) -> None:
    """One line per run across the axes, coloured by its metric ``values`` (viridis)."""
    from matplotlib import colormaps

    lo, hi = (values.min(), values.max()) if len(values) else (0, 1)
    cmap = colormaps["viridis"]
    xs = np.arange(len(axes_cols))
    for i in range(len(values)):
        ys = [scaled[c].iloc[i] for c in axes_cols]
        colour = cmap((values[i] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(xs, ys, color=colour, alpha=0.75, lw=1.2)


def _draw_axes(ax: Axes, axes_cols: list[str], ticks: dict[str, list[tuple[float, str]]]) -> None:
    """A vertical axis per column with its tick labels, named below."""
    xs = np.arange(len(axes_cols))
    for x, c in zip(xs, axes_cols, strict=True):
        ax.vlines(x, _NA_LEVEL - 0.04, 1.02, color="grey", lw=0.8)
        for y, label in ticks[c]:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(xs, [c.split(".", 1)[1] for c in axes_cols], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(_NA_LEVEL - 0.06, 1.05)
