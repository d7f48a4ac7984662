"""Interactive helpers for notebooks: a run explorer and a launch form for ``workbench run``.

``explore([...])`` shows the :class:`RunExplorer`: pick experiments, type an MLflow filter,
sort the runs table by any metric, select runs to overlay their metric histories and see
their parameter diff; *Refresh* re-reads the store, no kernel restart needed.

``LaunchForm("notebooks/01-manual-tracking.ipynb")`` builds typed inputs from a notebook's
``parameters`` cell (papermill reads the ``name: type = value  # help`` lines) and starts
``workbench run`` as a background process, showing its progress and the run's link.

Without a widget frontend (papermill, nbval, the workbench runner) widgets would show up as
an unreadable "VBox(...)" line, so :func:`interactive_frontend` decides what to show:

* ``WORKBENCH_WIDGETS=1`` / ``0`` forces widgets on / off;
* under the workbench runner (``$WORKBENCH_RUN_ID`` is set) there is no frontend: off;
* a kernel started by a Jupyter server (JupyterLab, Notebook) has ``$JPY_SESSION_NAME``,
  VS Code sets ``$VSCODE_PID``: on; anything else (papermill, nbval, plain IPython): off.

When off, ``explore`` displays a plain DataFrame and a static PNG figure instead. The
explorer's methods work the same either way, so cells can assert on them.
"""

from __future__ import annotations

import ast
import html
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench import compare

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDGETS_ENV = "WORKBENCH_WIDGETS"
MAX_TABLE_COLUMNS = 6


def interactive_frontend() -> bool:
    """Whether a widget frontend is (very likely) attached to this kernel; see module doc."""
    forced = os.environ.get(WIDGETS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get("WORKBENCH_RUN_ID"):
        return False
    from IPython import get_ipython

    if getattr(get_ipython(), "kernel", None) is None:
        return False
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (displayable everywhere, unlike a Figure object)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _display(*objs: Any) -> None:
    from IPython.display import display

    display(*objs)


# ------------------------------------------------------------------ run explorer


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
        import ipywidgets as w

        self._client = client or compare._client()
        names = compare.list_experiments(self._client)
        chosen = [experiments] if isinstance(experiments, str) else list(experiments or names[:1])
        self.frame = pd.DataFrame(columns=compare.BASE_COLUMNS)
        self.overlay_png: bytes = b""
        self.diff = pd.DataFrame()
        self.error: str | None = None

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
        self.widget = w.VBox(
            [
                w.HBox(
                    [
                        self.experiments,
                        w.VBox(
                            [
                                self.filter,
                                w.HBox([self.sort_by, self.descending, self.refresh_button]),
                            ]
                        ),
                    ]
                ),
                self.status,
                self.table,
                w.HBox([self.runs]),
                self.history_metric,
                self.overlay,
                self.diff_html,
            ]
        )
        self.widget.add_class("wb-run-explorer")
        self._want_sort, self._want_history = sort_by, history_metric
        self._busy = False

        self.refresh()
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

        _display(self.display_frame())
        if self.overlay_png:
            _display(Image(data=self.overlay_png))
        elif not self.frame.empty and self.history_metric.value:
            metric = self.history_metric.value
            ranked = self.frame[self.frame[f"metrics.{metric}"].notna()]
            fig = compare.history_overlay(ranked, metric, k=k, client=self._client)
            _display(Image(data=figure_png(fig)))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def show_figure(fig: Figure) -> None:
    """Display a matplotlib figure as a PNG, whatever the backend (inline, Agg, none)."""
    from IPython.display import Image

    _display(Image(data=figure_png(fig)))


def explore(
    experiments: str | Iterable[str] | None = None, *, interactive: bool | None = None, **kwargs
) -> RunExplorer:
    """Show a :class:`RunExplorer`: the widget with a frontend, else a plain DataFrame and
    a static figure (see :func:`interactive_frontend`). Returns the explorer."""
    explorer = RunExplorer(experiments, **kwargs)
    if interactive if interactive is not None else interactive_frontend():
        _display(explorer.widget)
    else:
        explorer.static()
    return explorer


# ------------------------------------------------------------------ launch form

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_URL = re.compile(r"https?://[^\s'\"<>]+")
_RUNNER_ENV = ("WORKBENCH_RUN_ID", "WORKBENCH_NOTEBOOK", "WORKBENCH_PARAMS_FILE")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's parameters: name -> {type, default (a Python value), help}."""
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    out = {}
    for name, spec in papermill.inspect_notebook(str(path)).items():
        raw = spec.get("default")
        try:
            default = ast.literal_eval(raw) if raw is not None else None
        except (ValueError, SyntaxError):
            default = raw
        kind = (spec.get("inferred_type_name") or "").lower().replace("none", "").strip() or type(
            default
        ).__name__
        out[name] = {"type": kind, "default": default, "help": spec.get("help") or ""}
    return out


class LaunchForm:
    """A form built from a notebook's ``parameters`` cell that starts ``workbench run``
    in the background and shows its progress and the resulting run's link."""

    def __init__(
        self, notebook: str | Path, *, experiment: str | None = None, timeout: float | None = None
    ):
        import ipywidgets as w

        self.notebook = Path(notebook)
        self.spec = notebook_parameters(self.notebook)
        self.experiment, self.timeout = experiment, timeout
        self.inputs: dict[str, w.Widget] = {}
        rows = []
        for name, spec in self.spec.items():
            control = self._input(name, spec)
            self.inputs[name] = control
            note = html.escape(f"{spec['type']}" + (f" - {spec['help']}" if spec["help"] else ""))
            rows.append(w.HBox([control, w.HTML(f"<small style='color:#555'>{note}</small>")]))
        self.button = w.Button(description="Run in background", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=100, description="idle")
        self.log = w.Textarea(value="", layout=w.Layout(width="95%", height="140px"), disabled=True)
        self.result = w.HTML()
        self.button.on_click(lambda _b: self.start())
        title = w.HTML(f"<b>Run {html.escape(self.notebook.name)} with workbench</b>")
        self.widget = w.VBox([title, *rows, self.button, self.progress, self.result, self.log])
        self.widget.add_class("wb-launch-form")
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._thread: threading.Thread | None = None

    @staticmethod
    def _input(name: str, spec: dict[str, Any]):
        import ipywidgets as w

        kind, default = spec["type"], spec["default"]
        style = {"description_width": "160px"}
        if kind == "bool" or isinstance(default, bool):
            return w.Checkbox(value=bool(default), description=name, indent=False, style=style)
        if kind == "int" and isinstance(default, int):
            return w.IntText(value=default, description=name, style=style)
        if kind == "float" and isinstance(default, (int, float)):
            return w.FloatText(value=float(default), description=name, style=style)
        return w.Text(value="" if default is None else str(default), description=name, style=style)

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.inputs.items()}

    def command(self) -> list[str]:
        """The ``workbench run`` command for the current values (only changed ones passed)."""
        cmd = [sys.executable, "-m", "workbench.cli", "run", str(self.notebook)]
        for name, value in self.values().items():
            default = self.spec[name]["default"]
            if value != default and not (value == "" and default is None):
                cmd += ["-p", name, str(value)]
        if self.experiment:
            cmd += ["--experiment", self.experiment]
        if self.timeout:
            cmd += ["--timeout", str(self.timeout)]
        return cmd

    def start(self) -> subprocess.Popen:
        """Start ``workbench run`` in the background (one at a time)."""
        from workbench.config import find_project_dir

        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("a run started from this form is still going; wait for it to finish")
        env = {
            k: v for k, v in os.environ.items() if k not in _RUNNER_ENV
        }  # never resume our own run
        self.output = []
        self.result.value = ""
        self.progress.description, self.progress.value, self.progress.bar_style = (
            "starting",
            0,
            "info",
        )
        self.log.value = " ".join(self.command()) + "\n"
        self.process = subprocess.Popen(
            self.command(),
            cwd=find_project_dir(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._thread = threading.Thread(target=self._follow, args=(self.process,), daemon=True)
        self._thread.start()
        return self.process

    def _follow(self, proc: subprocess.Popen) -> None:
        started = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))
            if m := _PROGRESS.search(line):
                done, total = int(m.group(1)), max(int(m.group(2)), 1)
                self.progress.value = int(100 * done / total)
            self.progress.description = f"{time.monotonic() - started:.0f} s"
            self.log.value = "\n".join(self.output[-30:])
        code = proc.wait()
        self.progress.value = 100
        self.progress.bar_style = "success" if code == 0 else "danger"
        self.progress.description = "done" if code == 0 else f"failed ({code})"
        links = _URL.findall("\n".join(self.output))
        link = (
            f" - <a href='{html.escape(links[-1])}' target='_blank'>{html.escape(links[-1])}</a>"
            if links
            else ""
        )
        self.result.value = (
            f"<b>{'finished' if code == 0 else 'failed'}</b> (exit code {code}){link}"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the background run; returns its exit code."""
        if self.process is None:
            raise RuntimeError("nothing started yet: call start() or press the button")
        code = self.process.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
