"""Hyperparameter search: an Optuna study is a parent MLflow run, each trial a nested child run.

The study's parent is the active workbench run (under the runner, the runner's run). Each
trial becomes a child run ``trial-<n>`` (tag ``mlflow.parentRunId``) with its parameters,
its score (mean and spread of the CV metric, or the validation metric), its intermediate
values, its state (tag ``workbench.trial.state``: complete, pruned, failed; status FINISHED,
KILLED, FAILED) and its duration. Child runs are written with ``MlflowClient`` (create, log
in one batch, terminate), never the fluent run stack, so threads (``n_jobs``) and several
worker processes can log at once.

Storage: in memory (default); ``journal:PATH`` (a journal file, for processes on one
machine); an RDB URL such as ``postgresql+psycopg://user@host/db`` (several machines; the
heartbeat fails the trials of a lost worker). ``workbench search-worker --study NAME
--storage URL`` joins a study: everything it needs (parent run, store, model family, space,
dataset) is in the study's user attributes.

Example::

    run = tracking.start_run("churn-search", algorithm="xgboost-search")
    result = run_search(model_family="xgboost", n_trials=30, storage="journal:study.log")
    result.best_params, result.best_value, result.model_uri
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.spaces import (
    METRICS,
    Objective,
    SearchSpaceError,
    family_name,
    make_estimator,
    make_problem,
    resolve_space,
)

__all__ = [
    "SearchError",
    "SearchSpaceError",
    "SearchStudy",
    "TrialRuns",
    "child_runs",
    "create_study",
    "join_study",
    "open_storage",
    "run_search",
    "start_workers",
    "worker_command",
]

STATE_TAG, TRIAL_TAG, STUDY_TAG = (
    "workbench.trial.state",
    "workbench.trial.number",
    "workbench.search.study",
)
RUN_ATTR, WORKER_ATTR, SETTINGS_ATTR = "mlflow_run_id", "worker", "workbench"
ORIGIN_ATTR = "origin"  # "defaults" on the trial that starts from the family's usual settings
HEARTBEAT_ENV = "WORKBENCH_SEARCH_HEARTBEAT"  # seconds between RDB heartbeats (default 10)
PRUNERS = ("median", "halving", "none")
_STATES = {
    "COMPLETE": ("complete", "FINISHED"),
    "PRUNED": ("pruned", "KILLED"),
    "FAIL": ("failed", "FAILED"),
}


class SearchError(RuntimeError):
    """The search cannot run or finish as asked; the message says what to do."""


# ---------------------------------------------------------------- storage


def storage_kind(url: str | None) -> str:
    """``memory``, ``journal`` or ``rdb``."""
    if not url or url == "memory":
        return "memory"
    return "journal" if url.startswith("journal:") else "rdb"


def normalize_storage(url: str | None) -> str | None:
    """The storage URL as workers elsewhere must see it: a journal path made absolute,
    ``postgresql://`` spelled ``postgresql+psycopg://`` (psycopg 3 is what is installed)."""
    kind = storage_kind(url)
    if kind == "memory":
        return None
    if kind == "journal":
        path = Path(url.removeprefix("journal:").removeprefix("//")).expanduser().resolve()
        return f"journal:{path}"
    for old in ("postgresql://", "postgres://"):
        if url.startswith(old):
            return "postgresql+psycopg://" + url[len(old) :]
    return url


def open_storage(url: str | None, *, heartbeat_interval: int | None = None):
    """An Optuna storage for ``url``: None (in memory), ``journal:PATH`` or an RDB URL.

    RDB storages get a heartbeat (``heartbeat_interval`` s, default ``$WORKBENCH_SEARCH_HEARTBEAT``
    or 10) so the trial of a killed worker is failed and its child run closed. ``postgresql://``
    becomes ``postgresql+psycopg://`` (psycopg 3 is what is installed).
    """
    import optuna

    url = normalize_storage(url)
    kind = storage_kind(url)
    if kind == "memory":
        return None
    if kind == "journal":
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    hb = heartbeat_interval or int(os.environ.get(HEARTBEAT_ENV, "10"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=hb, heartbeat_stale_trial_callback=_close_stale_trial
            )
    except Exception as exc:
        raise SearchError(
            f"cannot open the study storage {redact_url(url)}: {exc}\n"
            "fix: check the URL (e.g. postgresql+psycopg://user:pw@host:5432/db) and that the "
            "database is reachable, or use journal:PATH on one machine"
        ) from exc


def redact_url(url: str | None) -> str:
    """The storage URL without its password, fit to log."""
    if storage_kind(url) != "rdb":
        return url or "memory"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# ---------------------------------------------------------------- trials as child runs


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
        self.experiment_id = experiment_id or self.client.get_run(parent_run_id).info.experiment_id
        self.metric_name, self.study_name = metric_name, study_name
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def start(self, trial) -> str:
        """Create the child run of ``trial`` (RUNNING) and remember its id on the trial."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {
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
    return f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid())}"


def _proc_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _worker_dead(worker: str) -> bool:
    """True when ``worker`` ran on this host and its process is gone (or a zombie)."""
    try:
        host, pid, start = worker.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False  # another machine: only the RDB heartbeat can tell
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid_n}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] == "Z" or (bool(start) and stat[19] != start)


def _close_stale_trial(study, trial) -> None:
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
        optuna.storages.fail_stale_trials(study)  # RDB with heartbeat: calls _close_stale_trial
    from optuna.storages.journal import JournalStorage

    failed = []
    journal = isinstance(study._storage, JournalStorage)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if journal else []:
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker and _worker_dead(worker):
            try:
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
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


# ---------------------------------------------------------------- studies


@dataclass
class Settings:
    """What a worker needs to rebuild the objective; stored as the study's user attribute."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    model_family: str
    space: dict[str, Any]
    dataset: str = "churn"
    target: str | None = None
    data_seed: int = 0
    n_rows: int = 5000
    fingerprint: str = ""
    scoring: str = "cv"
    cv: int = 3
    cv_rows: str = "train"  # "train": folds of the training split; "all": of the whole table
    metric: str = "roc_auc"
    pruner: str = "median"
    seed: int = 0
    n_trials: int | None = None  # planned total; a worker without --trials stops there


def make_pruner(name: str | None, family: str):
    """``median`` (a trial below the median of earlier ones at the same step stops),
    ``halving`` (successive halving: only the top third of each rung goes on) or ``none``."""
    import optuna

    name = (name or "none").lower().replace("-", "_")
    rounds = family == "xgboost"  # steps are boosting rounds; otherwise folds
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30 if rounds else 0)
    if name in ("halving", "successive_halving", "sha"):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=30 if rounds else 1, reduction_factor=3
        )
    if name in ("none", "nop", ""):
        return optuna.pruners.NopPruner()
    raise SearchSpaceError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


@dataclass
class SearchStudy:
    """An Optuna study bound to its parent run, its objective and its data."""

    study: Any
    settings: Settings
    storage_url: str | None = field(repr=False)  # may hold a password
    split: Any = field(repr=False)
    objective: Objective = field(repr=False)
    runs: TrialRuns = field(repr=False)

    @property
    def name(self) -> str:
        return self.study.study_name

    def optimize(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        n_jobs: int = 1,
        callbacks: list | None = None,
    ) -> None:
        """Run trials in this process (``n_jobs`` threads); other workers may run at once.
        ``callbacks`` are Optuna callbacks run after each trial (e.g. one that stops the study)."""
        import optuna

        reconcile(self.study)
        callbacks = [self.runs, *(callbacks or [])]
        if n_trials is None and self.settings.n_trials:
            callbacks.append(optuna.study.MaxTrialsCallback(self.settings.n_trials, states=None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.optimize(
                self.runs.track(self.objective),
                n_trials=n_trials,
                timeout=timeout,
                n_jobs=n_jobs,
                catch=(Exception,),
                callbacks=callbacks,
            )
        reconcile(self.study)

    def counts(self) -> dict[str, int]:
        """Trials by state: complete, pruned, failed, running."""
        out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
        for t in self.study.get_trials(deepcopy=False):
            key = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(
                t.state.name, "running"
            )
            out[key] += 1
        return out

    def finish(self, *, log_model: bool = True, plots: bool = True) -> SearchResult:
        """Summarize on the parent run: best params and value, counts, tag the best trial's
        run, refit and log the best model, log Optuna's plots and the trials table."""
        return finish_study(self, log_model=log_model, plots=plots)


def _load_split(s: Settings):
    from workbench.data import DataError, load_dataset

    ds = load_dataset(s.dataset, s.target, seed=s.data_seed, n_rows=s.n_rows)
    if s.fingerprint and ds.fingerprint != s.fingerprint:
        raise DataError(
            f"dataset {s.dataset!r} changed since the study started (fingerprint {ds.fingerprint} != "
            f"{s.fingerprint}); workers must see the same data"
        )
    if s.cv_rows not in ("train", "all") or (s.cv_rows == "all" and s.scoring != "cv"):
        raise SearchSpaceError(
            f"cv_rows must be 'train' or 'all' (with scoring='cv'), got {s.cv_rows!r}"
        )
    return ds, ds.split(seed=s.seed)


def _bind(study, settings: Settings, storage_url: str | None, ds, split) -> SearchStudy:
    space = resolve_space(settings.model_family, settings.space)
    objective = Objective(
        space,
        make_problem(split, settings.cv, (ds.X, ds.y) if settings.cv_rows == "all" else None),
        scoring=settings.scoring,
        metric=settings.metric,
        seed=settings.seed,
    )
    runs = TrialRuns(
        settings.parent_run_id,
        tracking_uri=settings.tracking_uri,
        experiment_id=settings.experiment_id,
        metric_name=objective.metric_name,
        study_name=study.study_name,
    )
    return SearchStudy(study, settings, storage_url, split, objective, runs)


def create_study(
    model_family: str = "xgboost",
    *,
    space: Mapping[str, Any] | None = None,
    dataset: str = "churn",
    target: str | None = None,
    seed: int = 0,
    n_rows: int = 5000,
    scoring: str = "cv",
    cv: int = 3,
    cv_rows: str = "train",
    metric: str = "roc_auc",
    pruner: str = "median",
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    parent_run_id: str | None = None,
    start_from_defaults: bool = True,
) -> SearchStudy:
    """Check everything, then create the study under the parent run (default: the active run).

    With ``start_from_defaults`` the first trial tries the family's conventional settings
    (e.g. xgboost's learning rate 0.1, depth 6), tagged ``workbench.trial.origin=defaults``:
    the search starts from a known-good point and shows whether tuning beat the defaults.

    A malformed space, unknown family or pruner, or unusable dataset raises before any trial
    runs and before anything is logged.
    """
    import mlflow
    import optuna

    family = family_name(model_family)
    resolved = resolve_space(family, space)
    make_pruner(pruner, family)
    if scoring not in ("cv", "holdout") or metric not in METRICS or (scoring == "cv" and cv < 2):
        raise SearchSpaceError(
            f"scoring={scoring!r}, cv={cv}, metric={metric!r}: use scoring 'cv' (cv >= 2) or "
            f"'holdout', and a metric among {', '.join(METRICS)}"
        )
    if parent_run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise SearchError(
                "no parent run: call workbench.tracking.start_run(...) first, or pass parent_run_id="
            )
        parent_run_id = active.info.run_id
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    settings = Settings(
        parent_run_id,
        parent.info.experiment_id,
        mlflow.get_tracking_uri(),
        family,
        resolved.spec,
        dataset=str(dataset),
        target=target,
        data_seed=seed,
        n_rows=n_rows,
        scoring=scoring,
        cv=cv,
        cv_rows=cv_rows,
        metric=metric,
        pruner=pruner or "none",
        seed=seed,
        n_trials=n_trials,
    )
    ds, split = _load_split(settings)
    settings.fingerprint = ds.fingerprint
    storage = normalize_storage(storage)
    name = study_name or f"{family}-{parent_run_id[:8]}-{int(time.time())}"
    try:
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(storage),
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=make_pruner(pruner, family),
        )
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise SearchError(
            f"study {name!r} already exists in {redact_url(storage)}: pass another study_name, "
            "or join it with `workbench search-worker`"
        ) from exc
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    if start_from_defaults and (point := resolved.start_point()):
        study.enqueue_trial(point, user_attrs={ORIGIN_ATTR: "defaults"})
    bound = _bind(study, settings, storage, ds, split)
    _log_parent(client, parent_run_id, settings, name, storage, bound.objective.metric_name)
    return bound


def _log_parent(
    client, run_id: str, s: Settings, name: str, storage: str | None, metric_name: str
) -> None:
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    params = {
        "search_family": s.model_family,
        "search_space": json.dumps(s.space, sort_keys=True),
        "search_scoring": s.scoring if s.scoring == "holdout" else f"cv{s.cv}",
        "search_metric": metric_name,
        "search_pruner": s.pruner,
        "search_storage": storage_kind(storage),
        "search_seed": s.seed,
    }
    tags = {
        STUDY_TAG: name,
        "workbench.search.storage": redact_url(storage),
        "workbench.search.sampler": "tpe",
    }
    try:
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
    except MlflowException as exc:  # a second study under the same parent: keep the first's params
        warnings.warn(
            f"search settings not logged as params (already set on run {run_id}): {exc}",
            stacklevel=3,
        )
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def join_study(study_name: str, storage: str) -> SearchStudy:
    """Attach to an existing study (another process created it) to run more trials."""
    import mlflow
    import optuna

    if storage_kind(storage) == "memory":
        raise SearchError(
            "an in-memory study cannot be joined: create it with storage='journal:PATH' or an RDB URL"
        )
    backend = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError as exc:
        names = optuna.get_all_study_names(backend)
        raise SearchError(
            f"no study {study_name!r} in {redact_url(storage)}; studies there: {', '.join(names) or 'none'}"
        ) from exc
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if not raw:
        raise SearchError(
            f"study {study_name!r} was not created by workbench.search (no {SETTINGS_ATTR!r} user attribute)"
        )
    settings = Settings(**raw)
    # Samplers and pruners live in the process, not the storage: rebuild them. Each worker's
    # sampler is seeded differently (by the OS), or all would propose the same points.
    study.sampler = optuna.samplers.TPESampler()
    study.pruner = make_pruner(settings.pruner, settings.model_family)
    mlflow.set_tracking_uri(settings.tracking_uri)
    ds, split = _load_split(settings)
    return _bind(study, settings, storage, ds, split)


@dataclass
class SearchResult:
    """What a finished search produced."""

    study_name: str
    parent_run_id: str
    metric_name: str
    best_value: float
    best_params: dict[str, Any]
    best_trial: int
    best_run_id: str | None
    counts: dict[str, int]
    model_uri: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


PLOTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "slice",
    "intermediate_values",
)


def finish_study(s: SearchStudy, *, log_model: bool = True, plots: bool = True) -> SearchResult:
    """See ``SearchStudy.finish``. Model and figures go to the parent run, made active here
    if it is not (a parent this function resumes is ended FINISHED afterwards)."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    reconcile(s.study)
    counts = s.counts()
    if not counts["complete"]:
        raise SearchError(
            f"no trial of study {s.name!r} completed ({counts}); look at the failed child runs' "
            "workbench.trial.error tags, widen the space, or run more trials"
        ) from None
    best = s.study.best_trial
    metric, client, now = s.objective.metric_name, s.runs.client, int(time.time() * 1000)
    best_run = best.user_attrs.get(RUN_ATTR)
    metrics = [
        Metric("best_value", best.value, now, 0),
        Metric(f"best_{metric}", best.value, now, 0),
    ]
    metrics += [
        Metric(f"n_trials_{k}", float(v), now, 0) for k, v in counts.items() if k != "running"
    ]
    tags = [
        RunTag("workbench.search.best_trial", str(best.number)),
        RunTag("workbench.search.best_run_id", best_run or ""),
    ]
    params = [Param(f"best_{k}", str(v)) for k, v in best.params.items()]
    try:
        client.log_batch(s.settings.parent_run_id, metrics=metrics, params=params, tags=tags)
    except MlflowException:  # finished twice: params are immutable, keep metrics and tags fresh
        client.log_batch(s.settings.parent_run_id, metrics=metrics, tags=tags)
    if best_run:
        client.set_tag(best_run, "workbench.search.best", "true")
    result = SearchResult(
        s.name,
        s.settings.parent_run_id,
        metric,
        float(best.value),
        dict(best.params),
        best.number,
        best_run,
        counts,
    )
    if not (log_model or plots):
        return result
    active = mlflow.active_run()
    if active is not None and active.info.run_id != s.settings.parent_run_id:
        raise SearchError(
            f"run {active.info.run_id} is active, not the study's parent {s.settings.parent_run_id}"
        )
    resumed = active is None
    if resumed:
        mlflow.start_run(run_id=s.settings.parent_run_id)
    try:
        if log_model:
            result.model_uri, result.val_metrics = _refit(s, best)
        if plots:
            result.figures = _log_plots(s.study)
    finally:
        if resumed:
            mlflow.end_run()
    return result


def _refit(s: SearchStudy, best) -> tuple[str, dict[str, float]]:
    """Refit the best configuration on the training split as a raw-rows pipeline, evaluate it
    on the validation split and log it with the workbench's fast, safe model logging."""
    from workbench.data import make_pipeline
    from workbench.evaluation import evaluate_classifier
    from workbench.models import log_model

    params = {**s.objective.space.fixed, **best.params}
    est = make_estimator(
        s.settings.model_family,
        params,
        seed=s.settings.seed,
        n_estimators=best.user_attrs.get("n_rounds"),
    )
    model = make_pipeline(est, s.split.X_train).fit(s.split.X_train, s.split.y_train)
    metrics = evaluate_classifier(model, s.split.X_val, s.split.y_val, prefix="val_")
    info = log_model(
        model, s.split.X_train, name="model", tags={"workbench.search.best_trial": str(best.number)}
    )
    return info.model_uri, metrics


def _log_plots(study) -> list[str]:
    """Log Optuna's matplotlib plots as figures; a plot the study cannot support is skipped."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as ovm

    logged = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = getattr(ovm, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as exc:
            warnings.warn(f"skipped the {name} plot: {exc}", stacklevel=2)
            continue
        axes = out.ravel()[0] if hasattr(out, "ravel") else out
        fig = axes.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4))
        path = f"search/{name}.png"
        mlflow.log_figure(fig, path)
        plt.close(fig)
        logged.append(path)
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "search/trials.csv")
    return logged


# ---------------------------------------------------------------- one call, workers


def run_search(
    model_family: str = "xgboost",
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    n_jobs: int = 1,
    log_model: bool = True,
    plots: bool = True,
    **study_kwargs,
) -> SearchResult:
    """Create a study under the active run, run it here, and finish it (see ``create_study``)."""
    s = create_study(model_family, n_trials=n_trials, **study_kwargs)
    s.optimize(n_trials=n_trials, timeout=timeout, n_jobs=n_jobs)
    return s.finish(log_model=log_model, plots=plots)


def start_workers(
    study_name: str,
    storage: str,
    n: int,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    log_dir: str | Path | None = None,
) -> list[subprocess.Popen]:
    """Start ``n`` ``workbench search-worker`` processes on this machine; ``wait_workers``
    collects them. Their output goes to ``log_dir/worker-<i>.log`` (default: discarded)."""
    if storage_kind(storage) == "memory":
        raise SearchError("workers need a shared storage: use storage='journal:PATH' or an RDB URL")
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "search-worker",
        "--study",
        study_name,
        "--storage",
        storage,
    ]
    cmd += ["--trials", str(n_trials)] if n_trials else []
    cmd += ["--timeout", str(timeout)] if timeout else []
    procs = []
    for i in range(n):
        out = open(Path(log_dir) / f"worker-{i}.log", "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    return procs


def wait_workers(procs: list[subprocess.Popen], timeout: float | None = None) -> list[int]:
    """Wait for worker processes; kill any still running after ``timeout`` s. Exit codes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(
                p.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
            )
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def worker_command(*, study: str, storage: str, n_trials: int | None, timeout: float | None) -> int:
    """``workbench search-worker``: join ``study`` and run trials until ``n_trials`` (this
    worker), ``timeout`` seconds, or the study's planned total. Exit 0 when it ran (or had
    nothing left to run), 1 when every trial it ran failed, 2 when the study cannot be joined."""
    import optuna

    from workbench.cli import UsageError
    from workbench.data import DataError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        s = join_study(study, storage)
    except (SearchError, SearchSpaceError, DataError) as exc:
        raise UsageError(str(exc)) from exc
    if n_trials is None and timeout is None and not s.settings.n_trials:
        raise UsageError(
            f"study {study!r} has no planned number of trials: pass --trials N or --timeout S"
        )
    before = {t.number for t in s.study.get_trials(deepcopy=False)}
    if n_trials is None and s.settings.n_trials and len(before) >= s.settings.n_trials:
        print(
            f"study {study!r} already has its {s.settings.n_trials} planned trials: nothing to do"
        )
        return 0
    s.optimize(n_trials=n_trials, timeout=timeout)
    mine = [
        t
        for t in s.study.get_trials(deepcopy=False)
        if t.number not in before
        and t.user_attrs.get(WORKER_ATTR, "").startswith(f"{socket.gethostname()}:{os.getpid()}:")
    ]
    failed = sum(t.state.name == "FAIL" for t in mine)
    print(
        f"worker {os.getpid()}: {len(mine)} trials in study {study!r} ({failed} failed); study now {s.counts()}"
    )
    return 1 if mine and failed == len(mine) else 0
