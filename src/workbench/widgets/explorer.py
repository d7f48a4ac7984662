"""The run explorer widget: pick experiments, filter and sort their runs, select runs to
overlay their metric histories and see their parameter diff; *Refresh* re-reads the store.

Its non-widget API (``refresh``, ``select``, ``frame``, ``overlay_png``, ``diff``,
``static``) works without a frontend, so tests and notebook cells can assert on it.
``workbench.widgets.explore`` shows it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from workbench import compare
from workbench.core import store
from workbench.widgets.display import display_objects, figure_png

if TYPE_CHECKING:
    import ipywidgets

MAX_TABLE_COLUMNS = 6


class RunExplorer:
    """Runs of one or more experiments, filtered, sorted, selected and compared.

    Non-widget API (used by tests and the static fallback): :meth:`refresh`,
    :meth:`select`, ``frame`` (the runs table as shown), ``overlay_png`` and ``diff``.
    """

    def __init__(
        self,
        experiments: str | Iterable[str] | None = None,
        *,
        filter_string: str = "",
        sort_by: str | None = None,
        descending: bool = True,
        history_metric: str | None = None,
        client=None,
    ):
        import ipywidgets  # noqa: F401  (missing: fail before the store is touched)

        self._client = client or store.connect()
        names = compare.list_experiments(self._client)
        chosen = [experiments] if isinstance(experiments, str) else list(experiments or names[:1])
        self.frame = pd.DataFrame(columns=compare.BASE_COLUMNS)
        self.overlay_png: bytes = b""
        self.diff = pd.DataFrame()
        self.error: str | None = None

        self._make_controls(names, chosen, filter_string, descending)
        self._make_views()
        self.widget = self._layout()
        self._want_sort, self._want_history = sort_by, history_metric
        self._busy = False

        self.refresh()
        self._observe()

    # -- widgets

    def _make_controls(
        self, names: list[str], chosen: list[str], filter_string: str, descending: bool
    ) -> None:
        """What the user sets: experiments, filter, sort order, and the refresh button."""
        import ipywidgets as w

        self.experiments = w.SelectMultiple(
            options=names,
            value=[n for n in chosen if n in names],
            description="Experiments",
            rows=min(5, max(2, len(names))),
        )
        self.filter = w.Text(
            value=filter_string,
            description="Filter",
            placeholder="metrics.val_roc_auc > 0.7 and params.model = 'gbm'",
            continuous_update=False,
            layout=w.Layout(width="60%"),
        )
        self.sort_by = w.Dropdown(options=["start_time"], value="start_time", description="Sort by")
        self.descending = w.Checkbox(value=descending, description="descending", indent=False)
        self.refresh_button = w.Button(
            description="Refresh", icon="refresh", tooltip="re-read the tracking store"
        )

    def _make_views(self) -> None:
        """What shows the runs: status line, table, run picker, metric history and diff (the
        CSS classes let browser tests find them)."""
        import ipywidgets as w

        self.status = w.HTML()
        self.table = w.HTML()
        self.table.add_class("wb-runs-table")
        self.runs = w.SelectMultiple(
            options=[], description="Compare", rows=8, layout=w.Layout(width="95%")
        )
        self.runs.add_class("wb-run-select")
        self.history_metric = w.Dropdown(options=[], description="History of")
        self.overlay = w.Image(format="png", layout=w.Layout(max_width="720px"))
        self.overlay.add_class("wb-overlay")
        self.diff_html = w.HTML()
        self.diff_html.add_class("wb-diff")

    def _layout(self) -> ipywidgets.VBox:
        """Controls on top, then status, table, run picker, history and diff."""
        import ipywidgets as w

        controls = w.VBox(
            [self.filter, w.HBox([self.sort_by, self.descending, self.refresh_button])]
        )
        box = w.VBox(
            [
                w.HBox([self.experiments, controls]),
                self.status,
                self.table,
                w.HBox([self.runs]),
                self.history_metric,
                self.overlay,
                self.diff_html,
            ]
        )
        box.add_class("wb-run-explorer")
        return box

    def _observe(self) -> None:
        """Redraw on any control's change; a selection change while refreshing is ignored."""
        for control in (self.experiments, self.filter, self.sort_by, self.descending):
            control.observe(lambda _change: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh(reload_experiments=True))
        for control in (self.runs, self.history_metric):
            control.observe(
                lambda _change: None if self._busy else self._update_selection(), names="value"
            )

    # -- data

    def refresh(self, reload_experiments: bool = False) -> pd.DataFrame:
        """Re-read the runs from the store (and, with ``reload_experiments``, the list of
        experiments), keep what is still selected, redraw."""
        if self._busy:
            return self.frame
        self._busy = True
        try:
            if reload_experiments:
                names = compare.list_experiments(self._client)
                keep = [n for n in self.experiments.value if n in names]
                self.experiments.options = names
                self.experiments.value = keep
            self._load()
        finally:
            self._busy = False
        self._update_selection()
        return self.frame

    def _load(self) -> None:
        exps = list(self.experiments.value)
        if not exps:
            self.status.value = "<i>pick one or more experiments</i>"
            self.frame = pd.DataFrame(columns=compare.BASE_COLUMNS)
        else:
            try:
                frame = compare.runs_frame(exps, self.filter.value.strip(), client=self._client)
            except compare.CompareError as exc:
                self.error = str(exc)
                self.status.value = (
                    f"<pre style='color:#b00020;white-space:pre-wrap'>{html.escape(str(exc))}</pre>"
                )
                return
            self.error = None
            metrics = [f"metrics.{m}" for m in compare.metric_names(frame)]
            sort_options = ["start_time", *metrics]
            current = self._want_sort or self.sort_by.value
            if current and not current.startswith(("metrics.", "start_time")):
                current = f"metrics.{current}"
            self.sort_by.options = sort_options
            self.sort_by.value = current if current in sort_options else sort_options[0]
            self._want_sort = None
            col = self.sort_by.value
            self.frame = frame.sort_values(
                [col, "run_id"],
                ascending=[not self.descending.value, True],
                na_position="last",
                kind="mergesort",
            ).reset_index(drop=True)
            history = [m.removeprefix("metrics.") for m in metrics]
            want = self._want_history or self.history_metric.value
            self.history_metric.options = history
            if history:
                self.history_metric.value = (
                    want
                    if want in history
                    else (col.removeprefix("metrics.") if col in metrics else history[0])
                )
            self._want_history = None
            self.status.value = f"{len(self.frame)} run(s) in {', '.join(map(html.escape, exps))}, sorted by {html.escape(col)}"
        self.table.value = self.table_html()
        previous = set(self.runs.value)
        options = [(self._label(r), r.run_id) for r in self.frame.itertuples()]
        self.runs.options = options
        self.runs.value = [rid for _, rid in options if rid in previous]

    def _label(self, row) -> str:
        col = self.sort_by.value
        value = self.frame.at[row.Index, col]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)[:19]
        return f"{row.run_name or row.run_id[:8]}  |  {col.removeprefix('metrics.')}={shown}  |  {row.run_id[:8]}"

    def display_frame(self) -> pd.DataFrame:
        """The runs table as shown: names, status, start, the sort metric first, then
        up to six metrics and the parameters that vary."""
        f = self.frame
        if f.empty:
            return pd.DataFrame(columns=["run_name", "experiment", "status", "start_time"])
        metrics = [c for c in f.columns if c.startswith("metrics.")]
        if self.sort_by.value in metrics:
            metrics.remove(self.sort_by.value)
            metrics.insert(0, self.sort_by.value)
        params = [c for c in f.columns if c.startswith("params.") and f[c].nunique(dropna=True) > 1]
        cols = [
            "run_name",
            "experiment",
            "status",
            "start_time",
            *metrics[:MAX_TABLE_COLUMNS],
            *params[:MAX_TABLE_COLUMNS],
            "run_id",
        ]
        shown = f[cols].copy()
        shown["start_time"] = shown["start_time"].dt.strftime("%Y-%m-%d %H:%M:%S")
        shown.columns = [c.split(".", 1)[-1] for c in cols]
        return shown

    def table_html(self) -> str:
        table = self.display_frame().to_html(
            index=False, na_rep="", float_format=lambda v: f"{v:.4f}", classes="wb-runs", border=0
        )
        return f"<div style='max-height:320px;overflow:auto;font-size:12px'>{table}</div>"

    # -- selection

    def select(self, run_ids: Sequence[str]) -> None:
        """Select runs (as a click in the list would): draws the overlay and the diff."""
        self.runs.value = [rid for rid in run_ids if rid in set(self.frame["run_id"])]
        self._update_selection()

    def _update_selection(self) -> None:
        chosen = list(self.runs.value)
        metric = self.history_metric.value
        if not chosen or not metric:
            self.overlay_png, self.overlay.value = b"", b""
            self.diff = pd.DataFrame()
            self.diff_html.value = (
                "<i>select runs above to overlay their histories and compare parameters</i>"
            )
            return
        fig = compare.history_overlay(self.frame, metric, run_ids=chosen, client=self._client)
        self.overlay_png = figure_png(fig)
        self.overlay.value = self.overlay_png
        if len(chosen) == 2:
            self.diff = compare.diff_runs(self.frame, chosen[0], chosen[1])
            title = "What differs between the two runs (a &rarr; b)"
        else:
            rows = self.frame.set_index("run_id").loc[chosen]
            varying = [
                c
                for c in rows.columns
                if c.startswith("params.") and rows[c].astype(str).nunique() > 1
            ]
            self.diff = rows[["run_name", *varying]].reset_index()
            title = "Parameters that vary across the selected runs (select two for a full diff)"
        self.diff_html.value = f"<b>{title}</b>" + self.diff.to_html(
            index=False, na_rep="", border=0, classes="wb-diff-table"
        )

    # -- display

    def static(self, k: int = 5) -> None:
        """Display what a non-widget frontend can show: the table and an overlay PNG."""
        from IPython.display import Image

        display_objects(self.display_frame())
        if self.overlay_png:
            display_objects(Image(data=self.overlay_png))
        elif not self.frame.empty and self.history_metric.value:
            metric = self.history_metric.value
            ranked = self.frame[self.frame[f"metrics.{metric}"].notna()]
            fig = compare.history_overlay(ranked, metric, k=k, client=self._client)
            display_objects(Image(data=figure_png(fig)))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
