"""Finishing a search: summarize the best trial on the parent run, refit and log the best
model, and log Optuna's plots and the trials table."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.search.spaces import make_estimator
from workbench.search.storage import SearchError
from workbench.search.trials import RUN_ATTR, reconcile

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from workbench.search.study import SearchStudy


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
    counts = _completed_counts(s)
    best = s.study.best_trial
    best_run = best.user_attrs.get(RUN_ATTR)
    _summarize_on_parent(s, best, counts)
    result = SearchResult(
        s.name,
        s.settings.parent_run_id,
        s.objective.metric_name,
        float(best.value),
        dict(best.params),
        best.number,
        best_run,
        counts,
    )
    if log_model or plots:
        _log_to_parent(s, best, result, log_model=log_model, plots=plots)
    return result


def _completed_counts(s: SearchStudy) -> dict[str, int]:
    """Trial counts by state after sweeping lost trials; at least one must have completed."""
    reconcile(s.study)
    counts = s.counts()
    if not counts["complete"]:
        raise SearchError(
            f"no trial of study {s.name!r} completed ({counts}); look at the failed child runs' "
            "workbench.trial.error tags, widen the space, or run more trials"
        ) from None
    return counts


def _summarize_on_parent(s: SearchStudy, best: FrozenTrial, counts: dict[str, int]) -> None:
    """The best value, trial counts and best parameters on the parent run; the best trial's
    child run tagged ``workbench.search.best``."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

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


def _log_to_parent(
    s: SearchStudy, best: FrozenTrial, result: SearchResult, *, log_model: bool, plots: bool
) -> None:
    """Refit and log the best model and/or the plots into ``result``, with the parent run
    active (resumed here, and ended again, when no run is active)."""
    import mlflow

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


def _refit(s: SearchStudy, best: FrozenTrial) -> tuple[str, dict[str, float]]:
    """Refit the best configuration on the training split as a raw-rows pipeline, evaluate it
    on the validation split and log it with the workbench's fast, safe model logging."""
    from workbench.tracking.data import make_pipeline
    from workbench.tracking.evaluation import evaluate_classifier
    from workbench.tracking.models import log_model

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
