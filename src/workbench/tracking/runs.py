"""Runs with a naming convention, standard tags, honest endings and fast step metrics.

``start_run`` starts a run, or resumes the one the ``workbench`` runner created for this
notebook execution (its id arrives in ``$WORKBENCH_RUN_ID``). Either way the run is named
``<algorithm>-<key params>-<date>``, tagged with git state, the notebook path, the dataset
fingerprint and the parameters file, and a run whose code raises ends FAILED, never RUNNING
or FINISHED. In the runner's case the runner owns the ending; here we only log.

``StepLogger`` buffers per-step metrics and writes them with ``log_batch`` (at most 1,000
metrics a call): a 1,000-step curve costs one or two requests instead of a thousand.

Example::

    with start_run("churn", algorithm="gbm", params=params, key_params={"lr": 0.1}) as run:
        with StepLogger() as steps:
            for i, acc in enumerate(curve):
                steps.log(i, val_accuracy=acc)
"""

from __future__ import annotations

import atexit
import datetime as _dt
import math
import os
import re
import subprocess
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.core import store
from workbench.core.config import get_settings
from workbench.core.secrets import REDACTED, is_secret, redact  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from workbench.tracking.data import Dataset

RUN_ID_ENV = "WORKBENCH_RUN_ID"
NOTEBOOK_ENV = "WORKBENCH_NOTEBOOK"
PARAMS_FILE_ENV = "WORKBENCH_PARAMS_FILE"
MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call
MAX_PARAMS = 100  # and of params

# Canonical metric names, and the spellings people (and the article) use for them.
CANONICAL_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss")
_ALIASES = {
    "acc": "accuracy",
    "f1_score": "f1",
    "auc": "roc_auc",
    "auc_roc": "roc_auc",
    "rocauc": "roc_auc",
    "average_precision": "pr_auc",
    "auc_pr": "pr_auc",
    "logloss": "log_loss",
    "cross_entropy": "log_loss",
}


def canonical_metric(name: str) -> str:
    """Map a metric spelling to the workbench's canonical name, keeping any prefix:
    ``val_auc_roc`` -> ``val_roc_auc``; unknown names come back unchanged."""
    for prefix in ("", "train_", "val_", "test_", "cv_"):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if rest in _ALIASES:
                return prefix + _ALIASES[rest]
    return name


def run_name(
    algorithm: str, key_params: Mapping[str, Any] | None = None, when: _dt.date | None = None
) -> str:
    """``<algorithm>-<key params>-<date>``, e.g. ``gbm-lr0.1-depth3-20261127``."""
    parts = [algorithm]
    for k, v in redact(key_params or {}).items():
        v = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(f"{k}{v}")
    parts.append((when or _dt.date.today()).strftime("%Y%m%d"))
    return re.sub(r"\s+", "", "-".join(parts))


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool | None


def git_state(path: Path | None = None) -> GitState:
    """Commit, branch and dirty flag of the repository holding ``path`` (None outside git).

    One ``git status --porcelain=v2 --branch`` answers all three (a process start costs a
    few milliseconds; three of them were a tenth of ``start_run``).
    """
    cwd = str(path or get_settings().project_dir)
    out = _git(cwd, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if out is None:
        return GitState(None, None, None)
    header = dict(line[2:].split(" ", 1) for line in out.splitlines() if line.startswith("# "))
    commit = header.get("branch.oid")
    if commit is None:  # a git without porcelain v2 headers
        return _git_state_by_parts(cwd)
    if commit == "(initial)":  # no commit yet
        return GitState(None, None, None)
    branch = header.get("branch.head", "")
    return GitState(
        commit,
        "HEAD" if branch == "(detached)" else branch,  # what rev-parse --abbrev-ref says
        any(not line.startswith("#") for line in out.splitlines()),
    )


def _git(cwd: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_state_by_parts(cwd: str) -> GitState:
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None, None)
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return GitState(
        commit,
        _git(cwd, "rev-parse", "--abbrev-ref", "HEAD"),
        bool(status) if status is not None else None,
    )


def notebook_path() -> str | None:
    """The path of the notebook this code runs in, when it can be known."""
    for var in (NOTEBOOK_ENV, "JPY_SESSION_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        ip = get_ipython()  # type: ignore[name-defined]
        return ip.user_ns.get("__vsc_ipynb_file__")
    except NameError:
        return None


def standard_tags(dataset: Dataset | None = None) -> dict[str, str]:
    """Tags every workbench run carries."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME

    tags: dict[str, str] = {}
    git = git_state()
    if git.commit:
        tags[MLFLOW_GIT_COMMIT] = git.commit
        tags[MLFLOW_GIT_BRANCH] = git.branch or ""
        tags["workbench.git.dirty"] = str(git.dirty).lower()
    if nb := notebook_path():
        tags[MLFLOW_SOURCE_NAME] = nb
    if pf := os.environ.get(PARAMS_FILE_ENV):
        tags["workbench.params_file"] = pf
    if dataset is not None:
        tags["workbench.dataset.fingerprint"] = dataset.fingerprint
        tags["workbench.dataset.name"] = dataset.name
    return tags


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters to the active run in batches, secrets redacted, values stringified."""
    import mlflow
    from mlflow.entities import Param

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active run: call workbench.tracking.start_run(...) first")
    items = [Param(k, _param_value(v)) for k, v in redact(params).items()]
    client = mlflow.MlflowClient()
    for i in range(0, len(items), MAX_PARAMS):
        client.log_batch(run.info.run_id, params=items[i : i + MAX_PARAMS])


def _param_value(v: Any) -> str:
    return "" if v is None else str(v)[:6000]


def _one_batch(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``[first | second]`` (one request) when they agree on every name they share, else
    both, so that MLflow refuses the changed value as it would have; none when both are
    empty."""
    if any(_param_value(first[k]) != _param_value(second[k]) for k in first.keys() & second):
        return [first, second]
    merged = {**first, **second}
    return [merged] if merged else []


class RunHandle:
    """The run a notebook logs into; a context manager that ends it truthfully.

    ``owned`` is False when the workbench runner created the run: then the runner decides
    its final status (it sees timeouts and dead kernels, which the notebook cannot).
    """

    def __init__(self, run: Run, owned: bool):
        self.run = run
        self.owned = owned

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def experiment_id(self) -> str:
        return self.run.info.experiment_id

    @property
    def url(self) -> str:
        from workbench.core.config import run_url

        return run_url(self.experiment_id, self.run_id)

    def end(self, status: str = "FINISHED") -> None:
        """End the run (no-op for a runner-owned run: the runner ends it)."""
        import mlflow

        _flush_all()
        active = mlflow.active_run()
        if self.owned and active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, name={self.run.info.run_name!r}, owned={self.owned})"


_current: RunHandle | None = None


def start_run(
    experiment: str,
    *,
    algorithm: str = "run",
    key_params: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    dataset: Dataset | None = None,
    run_name_override: str | None = None,
) -> RunHandle:
    """Start (or resume) the run of this notebook execution and tag it.

    Resumes ``$WORKBENCH_RUN_ID`` when the workbench runner set it, unless an earlier
    top-level run of the notebook took that run and ended it: then, as any later top-level
    run there, it starts a child of it that we own (``tracking.handover``). Otherwise starts
    a new run in ``experiment``. Use it as a context manager, or call ``.end()`` in the last
    cell; in IPython a cell that raises ends a run we own as FAILED.
    """
    import mlflow

    from workbench.tracking import handover

    global _current
    store.connect()
    name = run_name_override or run_name(algorithm, key_params)
    all_tags = {**standard_tags(dataset), "workbench.algorithm": algorithm, **(tags or {})}
    runner_run = os.environ.get(RUN_ID_ENV)
    active = mlflow.active_run()
    if runner_run and handover.resumable(runner_run):
        if active is None or active.info.run_id != runner_run:
            mlflow.start_run(run_id=runner_run)
        # The runner named the run after the notebook; the convention name is more useful.
        all_tags["mlflow.runName"] = name
        handle = RunHandle(mlflow.active_run(), owned=False)
    else:
        if active is not None and _current is not None and active.info.run_id == _current.run_id:
            _current.end("FINISHED")  # re-running the setup cell interactively starts afresh
        elif active is not None:
            mlflow.end_run()
        exp_id = store.experiment_id(experiment)
        mlflow.start_run(experiment_id=exp_id, run_name=name)
        handle = RunHandle(mlflow.active_run(), owned=True)
        _watch_ipython_errors()
    # Fluent calls that start runs without naming an experiment (nested runs, autolog) must
    # land in this run's experiment, not in Default. Setting an existing id creates nothing,
    # so it is safe from parallel processes (unlike set_experiment by a new name).
    mlflow.set_experiment(experiment_id=handle.experiment_id)
    mlflow.set_tags(all_tags)
    for batch in _one_batch(params or {}, dataset.profile() if dataset is not None else {}):
        log_params(batch)
    if dataset is not None:
        from workbench.tracking.data import log_input

        log_input(dataset)
    handle.run = mlflow.get_run(handle.run_id)
    _current = handle
    return handle


def end_run(status: str = "FINISHED") -> None:
    """End the current workbench run (the notebook's last cell calls this)."""
    if _current is not None:
        _current.end(status)


_ipython_hooked = False


def _watch_ipython_errors() -> None:
    """In IPython, end a run we own as FAILED when a cell raises: left alone, a run
    started without ``with`` stays RUNNING forever (or ends FINISHED at exit)."""
    global _ipython_hooked
    if _ipython_hooked:
        return
    try:
        ip = get_ipython()  # type: ignore[name-defined]
    except NameError:
        return

    def on_post_run_cell(result) -> None:
        if result.error_in_exec is not None and _current is not None and _current.owned:
            import mlflow

            active = mlflow.active_run()
            if active is not None and active.info.run_id == _current.run_id:
                _current.end("FAILED")
                print(f"workbench: run {_current.run_id} ended FAILED because the cell raised.")

    ip.events.register("post_run_cell", on_post_run_cell)
    _ipython_hooked = True


# ---------------------------------------------------------------- buffered step metrics

_open_loggers: weakref.WeakSet[StepLogger] = weakref.WeakSet()


def _flush_all() -> None:
    for logger in list(_open_loggers):
        logger.flush()


atexit.register(_flush_all)


class StepLogger:
    """Buffer step metrics and write them with ``log_batch``, 1,000 at a time.

    Flushes when the buffer is full, on ``flush()``, on leaving a ``with`` block (also on
    error, so nothing logged before a crash is lost), when the run ends, and at exit.

    Example::

        with StepLogger() as steps:          # the active run, or StepLogger(run_id=...)
            for step, (tr, va) in enumerate(zip(train_acc, val_acc)):
                steps.log(step, train_accuracy=tr, val_accuracy=va)
    """

    def __init__(self, run_id: str | None = None, *, buffer_size: int = MAX_BATCH, client=None):
        import mlflow

        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise RuntimeError("StepLogger needs a run: start one first or pass run_id=")
            run_id = active.info.run_id
        self.run_id = run_id
        self.buffer_size = max(1, min(buffer_size, MAX_BATCH))
        self._client = client or mlflow.MlflowClient()
        self._buffer: list = []
        self.logged = 0
        _open_loggers.add(self)

    def log(self, step: int, /, **metrics: float) -> None:
        """Record metric values at ``step``; non-finite values are skipped."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self._buffer.append(Metric(canonical_metric(key), value, ts, int(step)))
        if len(self._buffer) >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (in calls of at most 1,000 metrics)."""
        while self._buffer:
            chunk, self._buffer = self._buffer[: self.buffer_size], self._buffer[self.buffer_size :]
            self._client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            self.logged += len(chunk)

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        _open_loggers.discard(self)
