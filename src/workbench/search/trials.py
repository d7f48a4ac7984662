"""Search trials as MLflow child runs: the ``TrialRuns`` callback and the lost-trial sweep.

Each Optuna trial becomes a child run ``trial-<n>`` of the study's parent run, written with
``MlflowClient`` (create, log in one batch, terminate) so threads and worker processes can
log at once. ``reconcile`` fails the trials of dead workers (heartbeat for an RDB, a process
check for a journal on this host) and closes child runs left RUNNING.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from workbench.core import optuna_compat, processes

STATE_TAG, TRIAL_TAG, STUDY_TAG = (
    "workbench.trial.state",
    "workbench.trial.number",
    "workbench.search.study",
)
RUN_ATTR, WORKER_ATTR, SETTINGS_ATTR = "mlflow_run_id", "worker", "workbench"
ORIGIN_ATTR = "origin"  # "defaults" on the trial that starts from the family's usual settings
_STATES = {
    "COMPLETE": ("complete", "FINISHED"),
    "PRUNED": ("pruned", "KILLED"),
    "FAIL": ("failed", "FAILED"),
}


INHERITED_TAGS = ("mlflow.source.name", "mlflow.source.type", "mlflow.user")


class TrialRuns:
    """Log each Optuna trial as a nested MLflow child run; an Optuna callback.

    ``track(objective)`` opens the child run when the trial starts (so a running or lost
    trial is visible), and the callback logs parameters, metrics, state and duration when it
    ends. Used as a callback alone it records finished trials after the fact. Thread- and
    process-safe: every call goes through ``MlflowClient`` with explicit run ids.

    Example::

        runs = TrialRuns(parent_run_id=parent.run_id, metric_name="cv_roc_auc")
        study.optimize(runs.track(objective), n_trials=20, n_jobs=2, callbacks=[runs])
    """

    def __init__(
        self,
        parent_run_id: str,
        *,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        metric_name: str = "value",
        study_name: str = "",
    ):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.parent_run_id = parent_run_id
        parent = self.client.get_run(parent_run_id)
        self.experiment_id = experiment_id or parent.info.experiment_id
        # Trials come from the same notebook (and user) as the study's run: say so.
        self.inherited = {k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS}
        self.metric_name, self.study_name = metric_name, study_name
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def start(self, trial) -> str:
        """Create the child run of ``trial`` (RUNNING) and remember its id on the trial."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {
            **self.inherited,
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            STATE_TAG: "running",
            TRIAL_TAG: str(trial.number),
            STUDY_TAG: self.study_name,
        }
        if origin := trial.user_attrs.get(ORIGIN_ATTR):
            tags["workbench.trial.origin"] = origin
        trial.set_user_attr(WORKER_ATTR, worker_id())  # first: a lost trial can then be failed
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial.number}", tags=tags
        )
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def track(self, objective: Callable[[Any], float]) -> Callable[[Any], float]:
        """Wrap ``objective`` so each trial opens its child run first, and a trial that raises
        is closed FAILED even when Optuna re-raises before calling the callbacks."""
        import optuna

        def tracked(trial) -> float:
            run_id = self.start(trial)
            try:
                return objective(trial)
            except optuna.TrialPruned:
                raise
            except Exception as exc:
                self.finish_run(
                    run_id, "FAIL", params=trial.params, error=f"{type(exc).__name__}: {exc}"
                )
                raise

        return tracked

    def __call__(self, study, trial) -> None:
        state = trial.state.name
        if state not in _STATES:
            return
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id is None:  # used as a callback alone: record the finished trial now
            from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

            start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
            run_id = self.client.create_run(
                self.experiment_id,
                start_time=start,
                run_name=f"trial-{trial.number}",
                tags={
                    **self.inherited,
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                    TRIAL_TAG: str(trial.number),
                    STUDY_TAG: self.study_name,
                },
            ).info.run_id
        self.finish_run(run_id, state, trial=trial)

    def finish_run(
        self, run_id: str, state: str, *, trial=None, params=None, error: str | None = None
    ) -> None:
        """Log the outcome of a trial to its child run and terminate it (once)."""
        from mlflow.entities import Metric, Param, RunTag

        with self._lock:
            if run_id in self._done:
                return
            self._done.add(run_id)
        label, status = _STATES[state]
        now = int(time.time() * 1000)
        metrics, tags = [], [RunTag(STATE_TAG, label)]
        if error:
            tags.append(RunTag("workbench.trial.error", error[:5000]))
        if trial is not None:
            params = trial.params
            attrs = trial.user_attrs
            if state == "COMPLETE" and trial.value is not None:
                metrics.append(Metric(self.metric_name, float(trial.value), now, 0))
                if "score_std" in attrs:
                    metrics.append(
                        Metric(f"{self.metric_name}_std", float(attrs["score_std"]), now, 0)
                    )
            if "n_rounds" in attrs:
                metrics.append(Metric("n_rounds", float(attrs["n_rounds"]), now, 0))
            if trial.datetime_start and trial.datetime_complete:
                seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
                metrics.append(Metric("duration_s", seconds, now, 0))
            steps = sorted(trial.intermediate_values.items())
            metrics += [Metric("intermediate_value", float(v), now, int(s)) for s, v in steps]
            if state == "PRUNED" and steps:
                metrics.append(Metric("pruned_at_step", float(steps[-1][0]), now, 0))
        items = [Param(k, str(v)) for k, v in (params or {}).items()]
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + 1000],
                params=items if i == 0 else [],
                tags=tags if i == 0 else [],
            )
        self.client.set_terminated(run_id, status=status, end_time=now)


def worker_id() -> str:
    """``host:pid:start`` of this process (start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{processes.start_ticks(os.getpid())}"


def _worker_dead(worker: str) -> bool:
    """True when ``worker`` ran on this host and its process is gone (or a zombie)."""
    try:
        host, pid, start = worker.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False  # another machine: only the RDB heartbeat can tell
    return not processes.alive(pid_n, start)


def close_stale_trial(study, trial) -> None:
    """Heartbeat-stale callback: Optuna failed ``trial``; close its child run FAILED."""
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id and settings.get("parent_run_id"):
        runs = TrialRuns(
            settings["parent_run_id"],
            tracking_uri=settings.get("tracking_uri"),
            experiment_id=settings.get("experiment_id"),
        )
        runs.finish_run(
            run_id, "FAIL", params=trial.params, error="worker lost: its heartbeat went stale"
        )


def reconcile(study) -> list[int]:
    """Fail trials whose worker died (heartbeat for RDB; process check for a journal on this
    host) and close every child run still RUNNING whose trial has finished. Returns the
    numbers of the trials it failed. Workers call it when they start and stop."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB with heartbeat: calls close_stale_trial
    failed = []
    journal = optuna_compat.uses_journal_storage(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if journal else []:
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker and _worker_dead(worker):
            try:
                if optuna_compat.fail_trial(study, t):
                    failed.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    if not settings.get("parent_run_id"):
        return failed
    runs = TrialRuns(
        settings["parent_run_id"],
        tracking_uri=settings.get("tracking_uri"),
        experiment_id=settings.get("experiment_id"),
    )
    trials = study.get_trials(deepcopy=False)
    by_run = {t.user_attrs.get(RUN_ATTR): t for t in trials}
    by_number = {str(t.number): t for t in trials}
    for run in child_runs(settings["parent_run_id"], client=runs.client, status="RUNNING"):
        t = by_run.get(run.info.run_id)
        if (
            t is None and run.data.tags.get(STUDY_TAG) == study.study_name
        ):  # lost before its id was saved
            t = by_number.get(run.data.tags.get(TRIAL_TAG, ""))
        if t is not None and t.state.name in _STATES:
            err = (
                f"worker {t.user_attrs.get(WORKER_ATTR)} died mid-trial"
                if t.state.name == "FAIL"
                else None
            )
            runs.finish_run(run.info.run_id, t.state.name, params=t.params, error=err)
    return failed


def child_runs(parent_run_id: str, *, client=None, status: str | None = None) -> list:
    """The child runs of a parent run (all pages), optionally only those with ``status``."""
    import mlflow

    client = client or mlflow.MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (
        f" and attributes.status = '{status}'" if status else ""
    )
    out, token = [], None
    while True:
        page = client.search_runs([exp], query, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out
