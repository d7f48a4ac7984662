"""``workbench batch``: expand batch files into jobs and run them, N kernels at a time.

A batch file is YAML; each document (``---`` separates several, run in order) names one
notebook::

    notebook: notebooks/01-manual-tracking.ipynb
    experiment: churn-gbm                  # optional (default: the notebook's experiment_name)
    params_file: params/01-manual-tracking/smoke.yaml   # optional, one or a list
    parameters: {n_estimators: 100}        # base values
    grid: {learning_rate: [0.05, 0.1]}     # optional: cartesian product
    runs: [{max_depth: 3}, {max_depth: 5}] # optional: a list of parameter sets
    label: gbm                             # optional label prefix; metric: key metric name
    kernel: python3                        # optional, papermill's meanings like `workbench run`'s
    cwd: data/                             #   -k, --cwd (beside the batch file, else the project),
    start_timeout: 120                     #   --start-timeout
    report_mode: true                      #   --report-mode

Every job is validated before anything runs (exit 2 and nothing written on any problem).
Documents run one after another (a later notebook may need an earlier one's runs); the jobs
of one document (its grid or run list) run in parallel in a process pool (``--jobs N``), each job with its own kernel and run; one failure
never stops the others; a kernel that never started is retried (see runner.execute).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from workbench.core import names, store
from workbench.core.config import get_settings
from workbench.core.errors import UsageError
from workbench.run.jobs import Job, RunOptions, derive_label, prepare_job, project_relative

KEYS = (
    "notebook",
    "experiment",
    "parameters",
    "params_file",
    "grid",
    "runs",
    "label",
    "metric",
    "timeout",
    "kernel",
    "cwd",
    "start_timeout",
    "report_mode",
)


def batch_files(paths: list[str]) -> list[Path]:
    """The batch files named, a directory standing for its *.yaml / *.yml files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise UsageError(f"{p} holds no batch files (*.yaml)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"batch file not found: {p}")
    return files


def _find(value: str, batch_file: Path, what: str) -> Path:
    """A path from a batch file: as given, else beside the batch file, else in the project."""
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [batch_file.parent / p, get_settings().project_dir / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    where = ", ".join(str(c.parent) for c in dict.fromkeys(candidates))
    raise UsageError(f"{what} not found: {value} (looked in {where})")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _run_sets(doc: dict, where: str) -> list[tuple[str | None, dict]]:
    runs = doc.get("runs")
    if runs is None:
        return [(None, {})]
    if not isinstance(runs, list) or not runs:
        raise UsageError(f"{where}: 'runs' must be a non-empty list of parameter mappings")
    out = []
    for item in runs:
        if not isinstance(item, dict):
            raise UsageError(f"{where}: each entry of 'runs' must be a mapping, got {item!r}")
        if set(item) <= {"label", "parameters"} and isinstance(item.get("parameters"), dict):
            out.append((item.get("label"), item["parameters"]))
        else:
            out.append((None, item))
    return out


def _scalars(doc: dict, where: str) -> tuple[str | None, float | None, str | None, str | None]:
    """``experiment``, ``timeout``, ``metric`` and ``label`` of a document, type-checked: a
    YAML ``timeout: "30"`` or ``experiment: 123`` is refused with the fix, not a traceback."""
    for key in ("experiment", "metric", "label"):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(
                f"{where}: '{key}' must be text, got {type(value).__name__} {value!r}; "
                f'quote it: {key}: "{value}"'
            )
    timeout = doc.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise UsageError(
            f"{where}: 'timeout' must be a number of seconds, got {type(timeout).__name__} "
            f"{timeout!r}; write it unquoted: timeout: 30"
        )
    if timeout is not None and timeout <= 0:
        raise UsageError(f"{where}: 'timeout' must be positive seconds, got {timeout}")
    return doc.get("experiment"), timeout, doc.get("metric"), doc.get("label")


def _options(doc: dict, path: Path, where: str) -> RunOptions:
    """``kernel``, ``cwd``, ``start_timeout`` and ``report_mode`` of a document, type-checked
    (the values themselves are checked with the job: an installed kernel, a directory)."""
    for key in ("kernel", "cwd"):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}: '{key}' must be text, got {type(value).__name__} {value!r}")
    start = doc.get("start_timeout", 60.0)
    if isinstance(start, bool) or not isinstance(start, int | float) or start <= 0:
        raise UsageError(f"{where}: 'start_timeout' must be positive seconds, got {start!r}")
    report_mode = doc.get("report_mode", False)
    if not isinstance(report_mode, bool):
        raise UsageError(f"{where}: 'report_mode' must be true or false, got {report_mode!r}")
    cwd = str(_find(doc["cwd"], path, "cwd")) if doc.get("cwd") else None
    return RunOptions(doc.get("kernel"), cwd, float(start), report_mode)


def expand(doc: Any, path: Path, index: int, timeout: float | None) -> list[Job]:
    """The jobs of one batch document, each validated against its notebook."""
    where = f"{path} (document {index})"
    if not isinstance(doc, dict) or "notebook" not in doc:
        raise UsageError(f"{where}: expected a mapping with a 'notebook:' key")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}"
        )
    experiment, doc_timeout, metric, prefix = _scalars(doc, where)
    options = _options(doc, path, where)
    notebook = _find(str(doc["notebook"]), path, "notebook")
    files = [
        str(_find(str(f), path, "params_file")) for f in _as_list(doc.get("params_file") or [])
    ]
    base = doc.get("parameters") or {}
    grid = doc.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise UsageError(f"{where}: 'parameters' and 'grid' must be mappings")
    names = list(grid)
    combos = [
        dict(zip(names, vals, strict=True))
        for vals in itertools.product(*(_as_list(grid[n]) for n in names))
    ]
    jobs = []
    for set_label, run_set in _run_sets(doc, where):
        for combo in combos:
            varying = {**run_set, **combo}
            label = set_label or (derive_label(varying) if varying else None)
            if prefix:
                label = f"{prefix}-{label}" if label else str(prefix)
            job = prepare_job(
                notebook,
                values={**base, **varying},
                params_files=files,
                experiment=experiment,
                timeout=timeout if timeout is not None else doc_timeout,
                label=label,
                label_values={} if files else None,
                metric=metric,
                options=options,
            )
            jobs.append(job)
    return jobs


def plan(paths: list[str], timeout: float | None) -> list[Job]:
    """Every job of every batch file, in order; all problems reported together."""
    return plan_stages(paths, timeout)[0]


def plan_stages(paths: list[str], timeout: float | None) -> tuple[list[Job], list[int]]:
    """The jobs, and for each the stage it belongs to (one stage per YAML document:
    documents run one after another, the jobs of one document in parallel)."""
    import yaml

    jobs: list[Job] = []
    stages: list[int] = []
    stage = 0
    errors: list[str] = []
    for path in batch_files(paths):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            errors.append(f"{path} is not valid YAML: {exc}")
            continue
        if not docs:
            errors.append(f"{path} is empty")
        for i, doc in enumerate(docs, 1):
            try:
                new = expand(doc, path, i, timeout)
                stages += [stage] * len(new)
                stage += 1
                jobs += new
            except UsageError as exc:
                where = f"{path} (document {i})"
                errors.append(str(exc) if str(exc).startswith(where) else f"{where}: {exc}")
    if errors:
        raise UsageError("\n".join(errors))
    return jobs, stages


def finished_hashes(client, experiment_id: str) -> set[str]:
    """Parameter hashes of the FINISHED runner runs in an experiment (for --resume)."""
    query = f"attributes.status = 'FINISHED' and tags.`{names.TAG_RUNNER}` = 'papermill'"
    runs = store.iter_runs(client, [experiment_id], query)
    return {r.data.tags.get(names.TAG_HASH) for r in runs}


def print_plan(jobs: list[Job], skipped: set[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{len(jobs)} job(s), {len(jobs) - len(skipped)} to run", title_justify="left"
    )
    for col in ("#", "notebook", "experiment", "label", "parameters", "action"):
        table.add_column(col, overflow="fold")
    for i, j in enumerate(jobs):
        params = ", ".join(f"{k}={v}" for k, v in j.parameters.items() if k != "experiment_name")
        action = "skip (FINISHED)" if i in skipped else "run"
        table.add_row(
            str(i + 1),
            project_relative(Path(j.notebook)),
            j.experiment,
            j.label,
            params,
            action,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def already_finished(client, todo: list[Job], resume: bool) -> set[int]:
    """Give each job its experiment id; with ``resume``, the indexes of jobs whose parameter
    set already has a FINISHED run in that experiment."""
    from workbench.core import store

    skipped: set[int] = set()
    done: dict[str, set[str]] = {}
    for i, job in enumerate(todo):
        job.experiment_id = store.experiment_id(job.experiment)
        if resume:
            if job.experiment_id not in done:
                done[job.experiment_id] = finished_hashes(client, job.experiment_id)
            if job.param_hash in done[job.experiment_id]:
                skipped.add(i)
    return skipped
