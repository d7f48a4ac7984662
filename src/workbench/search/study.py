"""A search study: the Optuna study bound to its parent run, its objective, its data and the
``TrialRuns`` callback that logs each trial as a child run; the settings a worker needs to
rebuild all of that (stored as the study's user attribute); and the pruners.

``workbench.search.create_study`` and ``join_study`` build one; this module is what they
share.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from workbench.search.finish import SearchResult, finish_study
from workbench.search.spaces import Objective, SearchSpaceError, make_problem, resolve_space
from workbench.search.trials import TrialRuns, reconcile

PRUNERS = ("median", "halving", "none")


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


def load_split(s: Settings):
    from workbench.tracking.data import DataError, load_dataset

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


def bind_study(study, settings: Settings, storage_url: str | None, ds, split) -> SearchStudy:
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
