"""Runs with a naming convention, standard tags, honest endings and fast step metrics.

``start_run`` starts a run, or resumes the one the ``workbench`` runner created for this
notebook execution (its id arrives in ``$WORKBENCH_RUN_ID``). Either way the run is named
``<algorithm>-<key params>-<date>``, tagged with git state, the notebook path, the dataset
fingerprint and the parameters file, and a run whose code raises ends FAILED, never RUNNING
or FINISHED. In the runner's case the runner owns the ending; here we only log. The
params and the dataset are logged on a thread while the notebook trains
(``tracking.background``); the run waits for them before it is read and at its end.

``StepLogger`` (``tracking.steps``, re-exported here) buffers per-step metrics and writes
them with ``log_batch``: a 1,000-step curve costs one or two requests instead of a thousand.

Example::

    with start_run("churn", algorithm="gbm", params=params, key_params={"lr": 0.1}) as run:
        with StepLogger() as steps:
            for i, acc in enumerate(curve):
                steps.log(i, val_accuracy=acc)
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workbench.core import store
from workbench.core.secrets import REDACTED, is_secret, redact  # noqa: F401  (re-exported)
from workbench.tracking.background import Pending
from workbench.tracking.git import GitState, git_state  # noqa: F401  (re-exported)
from workbench.tracking.steps import (  # noqa: F401  (re-exported)
    CANONICAL_METRICS,
    MAX_BATCH,
    StepLogger,
    canonical_metric,
    flush_all,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from workbench.tracking.data import Dataset

RUN_ID_ENV = "WORKBENCH_RUN_ID"
NOTEBOOK_ENV = "WORKBENCH_NOTEBOOK"
PARAMS_FILE_ENV = "WORKBENCH_PARAMS_FILE"
MAX_PARAMS = 100  # and of params


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


def log_params(params: Mapping[str, Any], *, run_id: str | None = None) -> None:
    """Log parameters to the active run (or ``run_id``) in batches, secrets redacted,
    values stringified."""
    import mlflow
    from mlflow.entities import Param

    if run_id is None:
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("no active run: call workbench.tracking.start_run(...) first")
        run_id = run.info.run_id
    items = [Param(k, _param_value(v)) for k, v in redact(params).items()]
    client = mlflow.MlflowClient()
    for i in range(0, len(items), MAX_PARAMS):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS])


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
    Work started for the run on other threads (``tracking.background``) is waited for by
    ``settle()``: before ``run`` is read, by the helpers that log into the run, and at the
    end; its error is raised there, after a run we own has ended FAILED.
    """

    def __init__(self, run: Run, owned: bool):
        self._run = run
        self.owned = owned
        self._pending: list[Pending] = []

    @property
    def run(self) -> Run:
        """The run as the store has it, once the work started for it is done."""
        self.settle()
        return self._run

    @run.setter
    def run(self, run: Run) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.info.run_id

    @property
    def experiment_id(self) -> str:
        return self._run.info.experiment_id

    @property
    def url(self) -> str:
        from workbench.core.config import run_url

        return run_url(self.experiment_id, self.run_id)

    def settle(self) -> None:
        """Wait for the work started for this run on other threads. If it raised, end the run
        FAILED (when we own it) and raise that error here."""
        while self._pending:
            try:
                self._pending.pop(0).wait()
            except BaseException:
                for other in self._pending:  # nothing may still write once the run has ended
                    other.wait_quietly()
                self._pending.clear()
                self._finish("FAILED")
                raise

    def end(self, status: str = "FINISHED") -> None:
        """End the run (no-op for a runner-owned run: the runner ends it), once the work
        started for it is done; if that work failed, the run ends FAILED and its error is
        raised."""
        flush_all()
        self.settle()
        self._finish(status)

    def _finish(self, status: str) -> None:
        import mlflow

        active = mlflow.active_run()
        if self.owned and active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        try:
            self.settle()
        except Exception as also:  # noqa: BLE001 - the body's error is the one raised
            exc.add_note(f"workbench: the run's background work failed too: {also!r}")
        self.end("FAILED")

    def __repr__(self) -> str:
        name = self._run.info.run_name
        return f"RunHandle(run_id={self.run_id!r}, name={name!r}, owned={self.owned})"


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
    if _current is not None:
        _current.settle()  # the previous run's work is done (or its error raised) first
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
    mlflow.set_tags(all_tags)  # here: a notebook reads the tags back at once
    handle._pending.append(
        Pending(
            lambda: _log_start(handle, params or {}, dataset),
            f"start_run logged the params and dataset of run {handle.run_id}",
        )
    )
    _current = handle
    return handle


def _log_start(handle: RunHandle, params: Mapping[str, Any], dataset: Dataset | None) -> None:
    """Params, dataset profile and input of a run just started (on a background thread:
    MLflow's active run is per thread, so everything names the run)."""
    import mlflow

    for batch in _one_batch(params, dataset.profile() if dataset is not None else {}):
        log_params(batch, run_id=handle.run_id)
    if dataset is not None:
        from workbench.tracking.data import log_input

        log_input(dataset, run_id=handle.run_id)
    handle.run = mlflow.MlflowClient().get_run(handle.run_id)


def settle() -> None:
    """Wait for the background work of the current run (raise its error): the helpers that
    log into a run call this first, so that the run they read and extend is complete."""
    if _current is not None:
        _current.settle()


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
                try:
                    _current.end("FAILED")
                except Exception as also:  # noqa: BLE001 - the cell's error is already shown
                    print(f"workbench: the run's background work failed too: {also!r}")
                print(f"workbench: run {_current.run_id} ended FAILED because the cell raised.")

    ip.events.register("post_run_cell", on_post_run_cell)
    _ipython_hooked = True


def _at_exit() -> None:
    """Flush step metrics; wait for the current run's background work, so that an error
    there ends the run FAILED and is printed rather than lost."""
    flush_all()
    try:
        settle()
    except Exception:  # noqa: BLE001 - nothing is left to raise it to at exit
        import traceback

        traceback.print_exc()


atexit.register(_at_exit)
