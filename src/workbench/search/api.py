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

This module creates studies and runs them in one call. The pieces live in ``search.study``
(the study object, its settings, pruners), ``search.workers`` (joining a study, worker
processes, ``workbench search-worker``), ``search.storage`` (storage URLs), ``search.trials``
(trials as child runs, lost-trial sweep), ``search.spaces`` (families, spaces, objective) and
``search.finish`` (best model, plots); their public names are re-exported here.

Example::

    run = tracking.start_run("churn-search", algorithm="xgboost-search")
    result = run_search(model_family="xgboost", n_trials=30, storage="journal:study.log")
    result.best_params, result.best_value, result.model_uri
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from workbench.search.finish import PLOTS, SearchResult, finish_study
from workbench.search.spaces import (  # noqa: F401  (re-exported)
    METRICS,
    Objective,
    SearchSpaceError,
    Space,
    family_name,
    make_problem,
    resolve_space,
)
from workbench.search.storage import (
    HEARTBEAT_ENV,
    SearchError,
    normalize_storage,
    open_storage,
    redact_url,
    storage_kind,
)
from workbench.search.study import (  # noqa: F401  (re-exported)
    PRUNERS,
    SearchStudy,
    Settings,
    bind_study,
    load_split,
    make_pruner,
)
from workbench.search.trials import (  # noqa: F401  (re-exported)
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
from workbench.search.workers import join_study, start_workers, wait_workers, worker_command

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

__all__ = [
    "HEARTBEAT_ENV",
    "PLOTS",
    "RUN_ATTR",
    "STATE_TAG",
    "TRIAL_TAG",
    "WORKER_ATTR",
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

    family, resolved = _checked_choices(model_family, space, pruner, scoring, cv, metric)
    client, parent_run_id, experiment_id = _parent_run(parent_run_id)
    settings = Settings(
        parent_run_id,
        experiment_id,
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
    ds, split = load_split(settings)
    settings.fingerprint = ds.fingerprint
    storage = normalize_storage(storage)
    name = study_name or f"{family}-{parent_run_id[:8]}-{int(time.time())}"
    study = _new_optuna_study(name, storage, settings, resolved, start_from_defaults)
    bound = bind_study(study, settings, storage, ds, split)
    _log_parent(client, parent_run_id, settings, name, storage, bound.objective.metric_name)
    return bound


def _checked_choices(
    model_family: str,
    space: Mapping[str, Any] | None,
    pruner: str,
    scoring: str,
    cv: int,
    metric: str,
) -> tuple[str, Space]:
    """The canonical family and its resolved space, once pruner, scoring and metric are known
    choices (a ``SearchSpaceError`` otherwise)."""
    family = family_name(model_family)
    resolved = resolve_space(family, space)
    make_pruner(pruner, family)
    if scoring not in ("cv", "holdout") or metric not in METRICS or (scoring == "cv" and cv < 2):
        raise SearchSpaceError(
            f"scoring={scoring!r}, cv={cv}, metric={metric!r}: use scoring 'cv' (cv >= 2) or "
            f"'holdout', and a metric among {', '.join(METRICS)}"
        )
    return family, resolved


def _parent_run(parent_run_id: str | None) -> tuple[MlflowClient, str, str]:
    """A client, the parent run's id (default: the active run's) and its experiment id."""
    import mlflow

    if parent_run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise SearchError(
                "no parent run: call workbench.tracking.start_run(...) first, or pass parent_run_id="
            )
        parent_run_id = active.info.run_id
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    return client, parent_run_id, parent.info.experiment_id


def _new_optuna_study(
    name: str, storage: str | None, settings: Settings, resolved: Space, start_from_defaults: bool
) -> optuna.Study:
    """The Optuna study in its storage, carrying the settings a worker needs to join it, and
    (with ``start_from_defaults``) the family's defaults queued as its first trial."""
    import optuna

    try:
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(storage),
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=settings.seed),
            pruner=make_pruner(settings.pruner, settings.model_family),
        )
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise SearchError(
            f"study {name!r} already exists in {redact_url(storage)}: pass another study_name, "
            "or join it with `workbench search-worker`"
        ) from exc
    study.set_user_attr(SETTINGS_ATTR, asdict(settings))
    if start_from_defaults and (point := resolved.start_point()):
        study.enqueue_trial(point, user_attrs={ORIGIN_ATTR: "defaults"})
    return study


def _log_parent(
    client: MlflowClient, run_id: str, s: Settings, name: str, storage: str | None, metric_name: str
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
