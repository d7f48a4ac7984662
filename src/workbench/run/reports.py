"""runs_reports/index.html and index.md: every notebook execution the runner recorded.

One row per run the runner created (tag ``workbench.runner``), newest first: when, experiment,
notebook, label, status (failures marked), duration, parameters, key metrics, and links to
the executed report and to the run in the MLflow UI. The store is the source of truth, so
the index can be rebuilt at any time with ``workbench report``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from workbench.core import names
from workbench.core.config import Settings, get_settings, run_url
from workbench.core.secrets import mask_url, redact

PREFERRED_METRICS = ("roc_auc", "accuracy", "f1", "pr_auc", "log_loss", "precision", "recall")
PREFIXES = ("test_", "val_", "", "cv_", "train_")
MAX_METRICS_SHOWN = 4


def key_metric(metrics: dict[str, float], preferred: str | None = None) -> tuple[str, float] | None:
    """The metric that best sums up a run: ``preferred`` if logged, else a canonical quality
    metric (test before validation before plain), else the first by name."""
    if not metrics:
        return None
    if preferred and preferred in metrics:
        return preferred, metrics[preferred]
    for name in PREFERRED_METRICS:
        for prefix in PREFIXES:
            if prefix + name in metrics:
                return prefix + name, metrics[prefix + name]
    name = sorted(metrics)[0]
    return name, metrics[name]


def format_metric(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Row:
    run_id: str
    url: str
    started: str
    start_ms: int
    experiment: str
    notebook: str
    label: str
    status: str
    duration: str
    parameters: str
    metrics: str
    key_metric: str
    report: str | None  # link relative to the index
    notebook_report: str | None
    reason: str

    @property
    def failed(self) -> bool:
        return self.status != "FINISHED"


def _link(path_tag: str | None, settings: Settings) -> str | None:
    if not path_tag:
        return None
    if path_tag.startswith(("http://", "https://")):  # a cluster run's report on the server
        return path_tag
    path = Path(path_tag)
    if not path.is_absolute():
        path = settings.project_dir / path
    relative = Path(os.path.relpath(path, settings.reports_dir)).as_posix()
    return quote(relative, safe="/")  # a link target, whatever characters the tag holds


def _row(run, exp_names: dict[str, str], settings: Settings) -> Row:

    tags, info = run.data.tags, run.info
    try:
        params = json.loads(tags.get(names.TAG_PARAMS, "{}"))
    except json.JSONDecodeError:
        params = {}
    params = {k: v for k, v in redact(params).items() if k != "experiment_name"}
    metrics = dict(run.data.metrics)
    key = key_metric(metrics, tags.get(names.TAG_METRIC))
    shown = [key[0]] if key else []
    shown += [m for m in sorted(metrics) if m not in shown][: MAX_METRICS_SHOWN - len(shown)]
    duration = tags.get(names.TAG_DURATION)
    if duration is None and info.end_time:
        duration = f"{(info.end_time - info.start_time) / 1000:.2f}"
    started = _dt.datetime.fromtimestamp(info.start_time / 1000)
    return Row(
        run_id=info.run_id,
        url=run_url(info.experiment_id, info.run_id, settings),
        started=started.strftime("%Y-%m-%d %H:%M:%S"),
        start_ms=info.start_time,
        experiment=exp_names.get(info.experiment_id, info.experiment_id),
        notebook=tags.get("mlflow.source.name", ""),
        label=tags.get(names.TAG_LABEL, ""),
        status=info.status,
        duration=f"{float(duration):.1f} s" if duration else "",
        parameters=", ".join(f"{k}={v}" for k, v in params.items()),
        metrics=", ".join(f"{m}={format_metric(metrics[m])}" for m in shown),
        key_metric=f"{key[0]}={format_metric(key[1])}" if key else "",
        report=_link(tags.get(names.TAG_REPORT_HTML), settings),
        notebook_report=_link(tags.get(names.TAG_REPORT), settings),
        reason=mask_url(tags.get(names.TAG_REASON, "")),
    )


def collect_rows(settings: Settings | None = None, client=None, fast: bool = True) -> list[Row]:
    """Every runner execution in the store, newest first (``fast``: read the embedded SQLite
    store with three queries, ``_sqlite_runs``; else, and for other stores, MLflow's API)."""
    from workbench.core import store

    settings = settings or get_settings()
    client = client or store.connect(settings, activate=False)
    exp_names = {e.experiment_id: e.name for e in store.iter_experiments(client)}
    runs = _sqlite_runs(client, list(exp_names)) if fast else None
    if runs is None:
        query = f"tags.`{names.TAG_RUNNER}` = 'papermill'"
        runs = list(store.iter_runs(client, exp_names, query))
    rows = [_row(r, exp_names, settings) for r in runs]
    rows.sort(key=lambda r: (r.start_ms, r.run_id), reverse=True)
    return rows


def _sqlite_runs(client, experiment_ids: list[str]) -> list[Any] | None:
    """The runner's runs of the active experiments, read from the embedded SQLite store with
    one query for the runs, one for their tags and one for their latest metrics; None for
    another store. The index is rebuilt after every execution, and ``search_runs`` builds each
    run's params, metrics and tags entity by entity: 0.45 s for 700 runs here, seconds for
    thousands. Each run comes back shaped as ``_row`` reads an MLflow ``Run`` (tested against
    the API's answer)."""
    from types import SimpleNamespace

    from workbench.core import mlflow_compat

    if not client.tracking_uri.startswith("sqlite:"):
        return None
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        backing = mlflow_compat.tracking_store(client.tracking_uri)
    except ImportError:  # MLflow moved its store cache: the API reads the same runs
        return None
    if not isinstance(backing, SqlAlchemyStore):
        return None
    if not experiment_ids:
        return []
    ids = ", ".join(str(int(e)) for e in experiment_ids)
    where = (
        f"r.experiment_id IN ({ids}) AND r.lifecycle_stage = 'active' AND r.run_uuid IN "
        "(SELECT run_uuid FROM tags WHERE key = ? AND value = 'papermill')"
    )
    join = f"JOIN runs r ON r.run_uuid = t.run_uuid WHERE {where}"
    with backing.ManagedSessionMaker() as session:
        con = session.connection().connection.driver_connection  # the sqlite3 connection
        found = con.execute(
            f"SELECT r.run_uuid, r.experiment_id, r.status, r.start_time, r.end_time "
            f"FROM runs r WHERE {where}",
            (names.TAG_RUNNER,),
        ).fetchall()
        tags = con.execute(
            f"SELECT t.run_uuid, t.key, t.value FROM tags t {join}", (names.TAG_RUNNER,)
        )
        metrics = con.execute(
            f"SELECT t.run_uuid, t.key, t.value, t.is_nan FROM latest_metrics t {join}",
            (names.TAG_RUNNER,),
        )
        runs = {
            run_id: SimpleNamespace(
                info=SimpleNamespace(
                    run_id=run_id,
                    experiment_id=str(exp),
                    status=status,
                    start_time=start,
                    end_time=end,
                ),
                data=SimpleNamespace(tags={}, metrics={}),
            )
            for run_id, exp, status, start, end in found
        }
        for run_id, key, value in tags:
            runs[run_id].data.tags[key] = value
        for run_id, key, value, is_nan in metrics:
            runs[run_id].data.metrics[key] = float("nan") if is_nan else value
    return list(runs.values())


def _markdown_cell(value: Any) -> str:
    """A value fit for one cell of a Markdown table: no pipe, newline or raw HTML."""
    text = str(value or "").replace("|", "\\|").replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(rows: list[Row], settings: Settings, fmt: str) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        # Every value comes from the store, which anyone with write access fills: escape all
        # of it in HTML (the templates are named *.html.j2, so select_autoescape's extension
        # test would never match them).
        autoescape=lambda name: bool(name) and ".html" in name,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = _markdown_cell
    context: dict[str, Any] = {
        "rows": rows,
        "failed": sum(r.failed for r in rows),
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "tracking_uri": mask_url(settings.tracking_uri),
    }
    return env.get_template(f"index.{fmt}.j2").render(**context)


def build_index(settings: Settings | None = None) -> Path:
    """Write index.html and index.md under the reports folder; return the HTML path."""
    settings = settings or get_settings()
    rows = collect_rows(settings)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    html = settings.reports_dir / "index.html"
    for fmt in ("html", "md"):
        target = settings.reports_dir / f"index.{fmt}"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(render(rows, settings, fmt), encoding="utf-8")
        tmp.replace(target)  # atomic: parallel runners never leave a half-written index
    return html


def rebuild_index() -> None:
    """Rewrite the index after runs ended; a failure is said, never raised (the runs are
    done and recorded whatever happens to the index)."""
    import sys

    try:
        build_index()
    except Exception as exc:
        print(f"note: could not rebuild the report index: {exc}", file=sys.stderr)
