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

The pieces live in ``search_storage`` (storage URLs), ``search_runs`` (trials as child runs,
lost-trial sweep) and ``search_finish`` (best model, plots); their public names are
re-exported here.

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
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.search_finish import PLOTS, SearchResult, finish_study
from workbench.search_runs import (
    ORIGIN_ATTR,
    RUN_ATTR,
    SETTINGS_ATTR,
    STATE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    WORKER_ATTR,
    TrialRuns,
    child_runs,
    reconcile,
    worker_id,
)
from workbench.search_storage import (
    HEARTBEAT_ENV,
    SearchError,
    normalize_storage,
    open_storage,
    redact_url,
    storage_kind,
)
from workbench.spaces import (
    METRICS,
    Objective,
    SearchSpaceError,
    family_name,
    make_problem,
    resolve_space,
)

__all__ = [
    "HEARTBEAT_ENV",
    "PLOTS",
    "RUN_ATTR",
    "STATE_TAG",
    "TRIAL_TAG",
    "SearchError",
    "SearchResult",
    "SearchSpaceError",
    "SearchStudy",
    "TrialRuns",
    "child_runs",
    "create_study",
    "finish_study",
    "join_study",
    "normalize_storage",
    "open_storage",
    "reconcile",
    "redact_url",
    "run_search",
    "start_workers",
    "storage_kind",
    "wait_workers",
    "worker_command",
    "worker_id",
]

PRUNERS = ("median", "halving", "none")


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
