"""Model families, their search spaces, and how one Optuna trial of a family is scored.

A search space is a plain mapping, so it can come from a notebook parameter or a YAML file::

    {"max_depth": ["int", 2, 8], "learning_rate": ["float", 0.01, 0.3, "log"],
     "class_weight": ["categorical", None, "balanced"], "n_jobs": 1}

``["int"|"float", low, high]`` with an optional ``"log"`` or a step, ``["categorical", ...]``,
or a plain value (fixed). ``resolve_space`` checks all of it against the family's estimator
before any trial runs, so a typo is an error that names the fix, not fifty failed trials.

``Objective`` scores a trial by cross-validation on the training split (mean and spread
reported) or on the validation split, and reports intermediate values so pruners can stop a
hopeless trial early: per boosting round for xgboost, per fold for scikit-learn models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FAMILIES = ("xgboost", "gradient_boosting", "random_forest", "logistic_regression")
_ALIASES = {"xgb": "xgboost", "gbm": "gradient_boosting", "gradientboosting": "gradient_boosting",
            "rf": "random_forest", "randomforest": "random_forest", "logreg": "logistic_regression",
            "logistic": "logistic_regression", "logisticregression": "logistic_regression"}  # fmt: skip
_KINDS = {"int", "float", "categorical", "cat"}

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    # n_estimators is a ceiling: early stopping on the validation folds picks the rounds.
    "xgboost": {
        "learning_rate": ["float", 0.05, 0.3, "log"],
        "max_depth": ["int", 3, 10],
        "min_child_weight": ["float", 1.0, 10.0, "log"],
        "subsample": ["float", 0.6, 1.0],
        "colsample_bytree": ["float", 0.6, 1.0],
        "reg_lambda": ["float", 1e-3, 10.0, "log"],
        "n_estimators": 1000,
    },
    "gradient_boosting": {
        "n_estimators": ["int", 50, 400],
        "learning_rate": ["float", 0.01, 0.3, "log"],
        "max_depth": ["int", 2, 6],
        "subsample": ["float", 0.5, 1.0],
        "min_samples_leaf": ["int", 1, 50, "log"],
    },
    "random_forest": {
        "n_estimators": ["int", 100, 400],
        "max_depth": ["int", 3, 20],
        "min_samples_leaf": ["int", 1, 20, "log"],
        "max_features": ["float", 0.2, 1.0],
    },
    "logistic_regression": {
        "C": ["float", 1e-3, 100.0, "log"],
        "class_weight": ["categorical", None, "balanced"],
    },
}
# The first trial of a study: conventional settings inside the default space, so the search
# starts from a known-good point and its report says whether tuning beat the defaults.
START_POINTS: dict[str, dict[str, Any]] = {
    "xgboost": {"learning_rate": 0.1, "max_depth": 6, "min_child_weight": 1.0, "subsample": 0.8,
                "colsample_bytree": 0.8, "reg_lambda": 1.0},
    "gradient_boosting": {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "subsample": 1.0,
                          "min_samples_leaf": 1},
    "random_forest": {"n_estimators": 200, "max_depth": 20, "min_samples_leaf": 1, "max_features": 0.5},
    "logistic_regression": {"C": 1.0, "class_weight": None},
}  # fmt: skip
XGB_EARLY_STOPPING = 20  # rounds without improvement of the validation metric
METRICS = {"roc_auc": ("auc", "roc_auc_score"), "pr_auc": ("aucpr", "average_precision_score")}


class SearchSpaceError(ValueError):
    """A search space (or model family) cannot be used; the message names the fix."""


@dataclass(frozen=True)
class Dim:
    """One searched parameter."""

    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def contains(self, value) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return (
            isinstance(value, int | float)
            and self.low <= value <= self.high
            and (self.kind == "float" or value == int(value))
        )

    def suggest(self, trial, name: str):
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))


@dataclass(frozen=True)
class Space:
    """A family's resolved space: searched dimensions and fixed values."""

    family: str
    dims: dict[str, Dim]
    fixed: dict[str, Any]
    spec: dict[str, Any]  # the merged mapping, as given (JSON-friendly, for study attributes)

    def suggest(self, trial) -> dict[str, Any]:
        return {**self.fixed, **{name: d.suggest(trial, name) for name, d in self.dims.items()}}

    def start_point(self) -> dict[str, Any]:
        """The family's conventional settings that lie inside this space (may be partial)."""
        return {
            k: v
            for k, v in START_POINTS[self.family].items()
            if k in self.dims and self.dims[k].contains(v)
        }


def family_name(name: str) -> str:
    """Canonical family name (``xgb`` -> ``xgboost``); a clear error for unknown names."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key.replace("_", ""), _ALIASES.get(key, key))
    if key not in FAMILIES:
        raise SearchSpaceError(
            f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}"
        )
    return key


def _usage(kind: str) -> str:
    return {
        "int": '["int", low, high] or ["int", low, high, "log"] or ["int", low, high, step]',
        "float": '["float", low, high] or ["float", low, high, "log"] or ["float", low, high, step]',
    }.get(kind, '["categorical", choice1, choice2, ...]')


def parse_dim(name: str, spec: Any) -> Dim | None:
    """Parse one entry; None means a fixed value. Raises SearchSpaceError on malformed specs."""
    if isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"search space entry {name!r}: got a mapping {spec!r}; use a list such as {_usage('float')}"
        )
    if not isinstance(spec, list | tuple):
        return None
    if not spec or not isinstance(spec[0], str) or spec[0].lower() not in _KINDS:
        raise SearchSpaceError(
            f"search space entry {name!r}: {list(spec)!r} must start with 'int', 'float' or "
            f"'categorical', e.g. {_usage('float')}; a fixed value is written plainly (not in a list)"
        )
    kind = "categorical" if spec[0].lower() == "cat" else spec[0].lower()
    rest = list(spec[1:])
    if kind == "categorical":
        choices = (
            tuple(rest[0]) if len(rest) == 1 and isinstance(rest[0], list | tuple) else tuple(rest)
        )
        if not choices:
            raise SearchSpaceError(f"search space entry {name!r}: no choices; write {_usage(kind)}")
        if any(not (c is None or isinstance(c, str | int | float | bool)) for c in choices):
            raise SearchSpaceError(
                f"search space entry {name!r}: choices must be None, bool, int, float or str"
            )
        return Dim("categorical", choices=choices)
    if len(rest) not in (2, 3) or any(
        isinstance(v, bool) or not isinstance(v, int | float) for v in rest[:2]
    ):
        raise SearchSpaceError(
            f"search space entry {name!r}: {list(spec)!r} is malformed; write {_usage(kind)}"
        )
    low, high = rest[0], rest[1]
    if kind == "int" and (float(low) != int(low) or float(high) != int(high)):
        raise SearchSpaceError(
            f"search space entry {name!r}: int bounds must be whole numbers, got {low}, {high}"
        )
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SearchSpaceError(
            f"search space entry {name!r}: low ({low}) must be below high ({high}); write {_usage(kind)}"
        )
    log, step = False, None
    if len(rest) == 3:
        extra = rest[2]
        if isinstance(extra, str) and extra.lower() == "log":
            log = True
        elif isinstance(extra, int | float) and not isinstance(extra, bool) and extra > 0:
            step = extra
        else:
            raise SearchSpaceError(
                f"search space entry {name!r}: the 4th item must be 'log' or a positive step, got {extra!r}"
            )
    if log and low <= 0:
        raise SearchSpaceError(f"search space entry {name!r}: a log scale needs low > 0, got {low}")
    return Dim(kind, low=low, high=high, log=log, step=step)


def _estimator_params(family: str) -> set[str]:
    return set(make_estimator(family, {}, seed=0).get_params())


def resolve_space(family: str, override: Mapping[str, Any] | None = None) -> Space:
    """The family's default space with ``override`` merged in (an entry set to the string
    ``"default"`` is dropped), validated against the estimator's parameter names."""
    family = family_name(family)
    if override is not None and not isinstance(override, Mapping):
        raise SearchSpaceError(
            f"search space must be a mapping of parameter -> spec, got {type(override).__name__}"
        )
    merged = {**DEFAULT_SPACES[family], **dict(override or {})}
    merged = {k: v for k, v in merged.items() if v != "default"}
    known = _estimator_params(family)
    unknown = sorted(k for k in merged if k not in known)
    if unknown:
        raise SearchSpaceError(
            f"search space for {family!r} names parameters the estimator does not have: {', '.join(unknown)}; "
            f"valid names include: {', '.join(sorted(known))}"
        )
    dims, fixed = {}, {}
    for name, spec in merged.items():
        dim = parse_dim(name, spec)
        if dim is None:
            fixed[name] = spec
        else:
            dims[name] = dim
    if not dims:
        raise SearchSpaceError(
            f"search space for {family!r} searches nothing: give at least one range"
        )
    return Space(
        family, dims, fixed, {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
    )


def make_estimator(
    family: str, params: Mapping[str, Any], *, seed: int, n_estimators: int | None = None
):
    """An unfitted estimator of ``family`` with ``params`` (one thread: parallelism comes
    from trials, and oversubscribed threads made xgboost 7x slower on 2 shared cores)."""
    params = dict(params)
    if family == "xgboost":
        from xgboost import XGBClassifier

        params.pop("early_stopping_rounds", None)  # trials stop early; a refit uses n_estimators
        if n_estimators is not None:
            params["n_estimators"] = n_estimators
        params.setdefault("tree_method", "hist")
        params.setdefault("n_jobs", 1)
        return XGBClassifier(random_state=seed, **params)
    if family == "gradient_boosting":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(random_state=seed, **params)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        params.setdefault("n_jobs", 1)
        return RandomForestClassifier(random_state=seed, **params)
    from sklearn.linear_model import LogisticRegression

    params.setdefault("max_iter", 2000)
    return LogisticRegression(random_state=seed, **params)


@dataclass
class Problem:
    """Training data for trials: preprocessed once (unsupervised: imputation, scaling and
    one-hot encoding see no labels), plus validation rows and fixed CV folds."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def make_problem(split, cv: int = 3, rows: tuple | None = None) -> Problem:
    """Preprocess a ``workbench.data.Split`` once for all trials. Folds are
    ``StratifiedKFold(cv)`` without shuffling, as ``cross_val_score(cv=3)`` uses. With
    ``rows=(X, y)`` the folds are cut from those rows (e.g. the whole table) instead of the
    training split."""
    from sklearn.model_selection import StratifiedKFold

    from workbench.tracking.data import make_preprocessor

    X_fit, y_fit = rows if rows is not None else (split.X_train, split.y_train)
    pre = make_preprocessor(X_fit).fit(X_fit)
    X_train = np.asarray(pre.transform(X_fit), dtype=np.float64)
    X_val = np.asarray(pre.transform(split.X_val), dtype=np.float64)
    y_train, y_val = np.asarray(y_fit, dtype=int), np.asarray(split.y_val, dtype=int)
    folds = list(StratifiedKFold(cv).split(X_train, y_train)) if cv and cv > 1 else []
    return Problem(X_train, y_train, X_val, y_val, folds)


def xgboost_pruning(trial, data: str, metric: str, every: int = 10):
    """An xgboost ``TrainingCallback`` that reports ``data``'s ``metric`` to an Optuna trial
    every ``every`` rounds and raises ``optuna.TrialPruned`` when the pruner says so (our own
    small version of optuna-integration's callback, which would be one more dependency)."""
    import optuna
    from xgboost.callback import TrainingCallback

    class _Pruning(TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            if epoch % max(1, every):
                return False
            value = evals_log[data][metric][-1]
            value = float(value[0] if isinstance(value, tuple) else value)  # cv: (mean, std)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at round {epoch} ({metric}={value:.4f})")
            return False

    return _Pruning()


class Objective:
    """Score one trial: the mean CV metric (``scoring="cv"``) or the validation metric.

    Sets the trial's user attributes ``score_std`` (CV spread) and, for xgboost, ``n_rounds``
    (the early-stopped number of trees, used when the best model is refit).
    """

    def __init__(self, space: Space, problem: Problem, *, scoring: str = "cv", metric: str = "roc_auc",
                 seed: int = 0, report_every: int = 10):  # fmt: skip
        if scoring not in ("cv", "holdout"):
            raise SearchSpaceError(f"scoring must be 'cv' or 'holdout', got {scoring!r}")
        if metric not in METRICS:
            raise SearchSpaceError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if scoring == "cv" and not problem.folds:
            raise SearchSpaceError("scoring='cv' needs cv >= 2 folds")
        self.space, self.problem, self.scoring, self.metric = space, problem, scoring, metric
        self.seed, self.report_every = seed, report_every

    @property
    def metric_name(self) -> str:
        return f"cv_{self.metric}" if self.scoring == "cv" else f"val_{self.metric}"

    def __call__(self, trial) -> float:
        params = self.space.suggest(trial)
        if self.space.family == "xgboost":
            mean, std, rounds = self._xgboost(trial, params)
            trial.set_user_attr("n_rounds", rounds)
        else:
            mean, std = self._sklearn(trial, params)
        trial.set_user_attr("score_std", std)
        return mean

    def _score(self, y, prob) -> float:
        from sklearn import metrics

        return float(getattr(metrics, METRICS[self.metric][1])(y, prob))

    def _sklearn(self, trial, params) -> tuple[float, float]:
        import optuna

        p = self.problem
        if self.scoring == "holdout":
            est = make_estimator(self.space.family, params, seed=self.seed).fit(
                p.X_train, p.y_train
            )
            score = self._score(p.y_val, est.predict_proba(p.X_val)[:, 1])
            trial.report(score, 0)
            return score, 0.0
        scores: list[float] = []
        for k, (tr, te) in enumerate(p.folds):
            est = make_estimator(self.space.family, params, seed=self.seed).fit(
                p.X_train[tr], p.y_train[tr]
            )
            scores.append(self._score(p.y_train[te], est.predict_proba(p.X_train[te])[:, 1]))
            trial.report(float(np.mean(scores)), k)
            if k < len(p.folds) - 1 and trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after fold {k + 1} (running mean {np.mean(scores):.4f})"
                )
        return float(np.mean(scores)), float(np.std(scores))

    def _xgboost(self, trial, params) -> tuple[float, float, int]:
        import xgboost as xgb

        p = self.problem
        params = dict(params)
        rounds = int(params.pop("n_estimators", 1000))
        early = int(params.pop("early_stopping_rounds", XGB_EARLY_STOPPING))
        booster_params = {"objective": "binary:logistic", "eval_metric": METRICS[self.metric][0],
                          "tree_method": "hist", "nthread": 1, "seed": self.seed, **params}  # fmt: skip
        booster_params.pop("n_jobs", None)
        eval_key = METRICS[self.metric][0]
        if self.scoring == "cv":
            cb = xgboost_pruning(trial, "test", eval_key, self.report_every)
            dtrain = xgb.DMatrix(p.X_train, label=p.y_train, nthread=1)
            hist = xgb.cv(booster_params, dtrain, num_boost_round=rounds, folds=p.folds,
                          early_stopping_rounds=early, callbacks=[cb], verbose_eval=False)  # fmt: skip
            return (
                float(hist[f"test-{eval_key}-mean"].iloc[-1]),
                float(hist[f"test-{eval_key}-std"].iloc[-1]),
                len(hist),
            )
        cb = xgboost_pruning(trial, "val", eval_key, self.report_every)
        dtrain, dval = (
            xgb.DMatrix(p.X_train, label=p.y_train, nthread=1),
            xgb.DMatrix(p.X_val, label=p.y_val, nthread=1),
        )
        booster = xgb.train(booster_params, dtrain, num_boost_round=rounds, evals=[(dval, "val")],
                            early_stopping_rounds=early, callbacks=[cb], verbose_eval=False)  # fmt: skip
        best = int(booster.best_iteration) + 1
        prob = booster.predict(dval, iteration_range=(0, best))
        return self._score(p.y_val, prob), 0.0, best
