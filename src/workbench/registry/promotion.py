"""The model registry with aliases, gated promotion, audit tags and rollback.

Stages are deprecated in MLflow 3; a version's role is an alias instead: ``challenger`` is
the version under review, ``champion`` the one that serves (``models:/<name>@champion``).

``promote`` scores the challenger and the current champion on the *same* held-out rows and
moves ``champion`` only when the challenger beats it by at least ``margin`` on ``metric``
(direction aware: for ``log_loss`` lower is better). Otherwise it raises
``PromotionRefused`` carrying both scores. ``override=True`` promotes anyway and says so in
the tags. Every decision leaves audit tags on the version (who, when, why, the scores, the
previous champion), and ``rollback`` walks the champion back along that record.

Example::

    mv = register(info, "churn-classifier", description="GBM, 100 trees")
    set_challenger("churn-classifier", mv.version)
    result = promote("churn-classifier", split.X_test, split.y_test, metric="roc_auc", margin=0.01)
    model = load("churn-classifier")            # models:/churn-classifier@champion

The rule and the records (``beats``, ``PromotionResult``, the tag prefixes) live in
``registry.decisions``; registering, aliases, loading and listing in ``registry.versions``.
Their public names are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

import pandas as pd

from workbench.core import store
from workbench.registry.decisions import (
    CHALLENGER,
    CHAMPION,
    DEMOTED,
    LOWER_IS_BETTER,  # noqa: F401  (re-exported)
    METRICS,  # noqa: F401  (re-exported)
    PROMOTION,
    REFUSED,
    ROLLBACK,
    ROLLED_BACK,
    PromotionRefused,
    PromotionResult,
    RegistryError,
    RollbackResult,
    _improvement,  # noqa: F401  (re-exported)
    beats,
    checked_metric,
)
from workbench.registry.guard import (  # noqa: F401  (current_user re-exported)
    champion_guard,
    check_champion_unchanged,
    current_user,
)
from workbench.registry.versions import (  # noqa: F401  (re-exported: notebooks, tests, serving)
    aliases,
    describe,
    get_version,
    list_versions,
    load,
    load_sklearn,
    model_id_of,
    model_uri,
    register,
    require_alias,
    set_alias,
    set_challenger,
    source_uri,
    tag,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def score(
    name: str, version: str | int, X: pd.DataFrame, y, *, trust: bool = False
) -> dict[str, float]:
    """Classification metrics of one version on ``(X, y)``; the model is loaded under the
    safe-loading check (``trust=True`` loads a model it refuses, and is logged)."""
    import numpy as np

    from workbench.tracking import models
    from workbench.tracking.evaluation import classification_metrics

    model = models.load_sklearn(f"models:/{name}/{version}", trust=trust)
    if not hasattr(model, "predict_proba"):
        raise RegistryError(
            f"{name} v{version} has no predict_proba: it cannot be scored for promotion"
        )
    y_true = np.asarray(y).astype(int)
    return classification_metrics(y_true, model.predict(X), model.predict_proba(X)[:, 1])


def promote(
    name: str,
    X: pd.DataFrame,
    y,
    *,
    version: str | int | None = None,
    metric: str = "roc_auc",
    margin: float = 0.0,
    override: bool = False,
    reason: str = "",
    raise_on_refusal: bool = True,
    trust: bool = False,
) -> PromotionResult:
    """Make ``version`` (default: the challenger) champion if it beats the champion.

    Both are scored on the same ``(X, y)``; the challenger must be better on ``metric`` by at
    least ``margin``. With no champion yet the first promotion is allowed. ``override=True``
    promotes regardless and is recorded. A refusal raises ``PromotionRefused`` (or, with
    ``raise_on_refusal=False``, returns a result whose ``promoted`` is False). If the champion
    moved while the versions were scored, ``RegistryError`` says so and nothing changes.
    ``trust=True`` scores models the safe loader refuses (pickles), and is logged.
    """
    metric = _checked_request(metric, margin, X, y)
    client = store.connect()
    version = _candidate_version(client, name, version)
    previous = _previous_champion(name, version)
    scores = _score_both(name, version, previous, X, y, override=override, trust=trust)
    result = _decide(
        name,
        version,
        previous,
        scores,
        X,
        y,
        metric=metric,
        margin=margin,
        override=override,
        reason=reason,
    )
    if not result.promoted:
        _record(client, name, version, REFUSED, result, champion_version=previous or "")
        if raise_on_refusal:
            raise PromotionRefused(result)
        return result
    with champion_guard():
        check_champion_unchanged(name, version, previous)
        _crown(client, result)
    return result


def _checked_request(metric: str, margin: float, X: pd.DataFrame, y) -> str:
    """The canonical metric name, once the margin and the held-out data make sense."""
    metric = checked_metric(metric)
    if margin < 0:
        raise RegistryError(f"margin must be >= 0, got {margin}")
    if len(X) == 0 or len(X) != len(y):
        raise RegistryError(
            f"held-out data must be non-empty with one label a row (got {len(X)} rows, {len(y)} labels)"
        )
    return metric


def _candidate_version(client: MlflowClient, name: str, version: str | int | None) -> str:
    """The version up for promotion: the one given, else the challenger; it must exist."""
    if version is None:
        mv = get_version(name, CHALLENGER)
        if mv is None:
            raise RegistryError(
                f"model {name!r} has no challenger: call set_challenger({name!r}, VERSION) or pass version="
            )
        version = mv.version
    version = str(version)
    client.get_model_version(name, version)  # fails clearly when the version does not exist
    return version


def _previous_champion(name: str, version: str) -> str | None:
    """The current champion's version (None when there is none), never ``version`` itself."""
    champion = get_version(name, CHAMPION)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    return previous


def _score_both(
    name: str,
    version: str,
    previous: str | None,
    X: pd.DataFrame,
    y,
    *,
    override: bool,
    trust: bool = False,
) -> dict[str, dict[str, float]]:
    """Scores of the challenger and (when there is one) the champion on the same rows.

    A champion that cannot be scored stops the promotion, unless ``override`` replaces it.
    """
    scores = {"challenger": score(name, version, X, y, trust=trust)}
    if previous is not None:
        try:
            scores["champion"] = score(name, previous, X, y, trust=trust)
        except Exception as exc:
            if not override:
                raise RegistryError(
                    f"cannot score the champion {name} v{previous}: {exc}\nfix: repair it, or "
                    "replace it with override=True and a reason (recorded in the tags)"
                ) from exc
    return scores


def _decide(
    name: str,
    version: str,
    previous: str | None,
    scores: dict[str, dict[str, float]],
    X: pd.DataFrame,
    y,
    *,
    metric: str,
    margin: float,
    override: bool,
    reason: str,
) -> PromotionResult:
    """Apply the rule (``beats`` by ``margin``, or no champion yet) and record who and when."""
    chall = scores["challenger"][metric]
    champ = scores["champion"][metric] if "champion" in scores else None
    won = previous is None or (champ is not None and beats(metric, chall, champ, margin))
    return PromotionResult(
        name=name,
        version=version,
        previous_champion=previous,
        metric=metric,
        margin=float(margin),
        challenger_score=chall,
        champion_score=champ,
        promoted=won or override,
        override=override and not won,
        reason=reason or _default_reason(previous, won, override),
        by=current_user(),
        at=_now(),
        held_out_rows=len(X),
        held_out_fingerprint=_fingerprint(X, y),
        scores=scores,
    )


def _crown(client: MlflowClient, result: PromotionResult) -> None:
    """Record the promotion, move ``champion``, tag the demoted version, drop a spent challenger."""
    name, version, previous = result.name, result.version, result.previous_champion
    decision = "override" if result.override else "first" if previous is None else "promoted"
    _record(
        client,
        name,
        version,
        PROMOTION,
        result,
        decision=decision,
        previous_champion=previous or "",
    )
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None:
        tag(
            name,
            previous,
            **{
                f"{DEMOTED}at": result.at,
                f"{DEMOTED}by": result.by,
                f"{DEMOTED}replaced_by": version,
            },
        )
    challenger = get_version(name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def _default_reason(previous: str | None, won: bool, override: bool) -> str:
    if previous is None:
        return "first champion"
    if won:
        return "challenger beat the champion"
    return "override" if override else "challenger did not beat the champion"


def _fingerprint(X: pd.DataFrame, y) -> str:
    """Content hash of the held-out rows and labels, so an audit can tell they were the same."""
    from workbench.tracking.data import fingerprint

    frame = pd.DataFrame(X).reset_index(drop=True).assign(__label__=list(y))
    return fingerprint(frame)


def _record(
    client: MlflowClient, name: str, version: str, prefix: str, r: PromotionResult, **extra: str
) -> None:
    """Write a decision as tags on the version: who, when, why and the scores."""
    values = {
        "by": r.by,
        "at": r.at,
        "reason": r.reason,
        "metric": r.metric,
        "margin": f"{r.margin:g}",
        "challenger_score": f"{r.challenger_score:.6f}",
        "champion_score": "" if r.champion_score is None else f"{r.champion_score:.6f}",
        "override": str(r.override).lower(),
        "held_out_rows": str(r.held_out_rows),
        "held_out_fingerprint": r.held_out_fingerprint,
        **extra,
    }
    for key, value in values.items():
        client.set_model_version_tag(name, version, prefix + key, value)


def rollback(name: str, *, reason: str = "") -> RollbackResult:
    """Move ``champion`` back to the version it replaced (as recorded at promotion)."""
    client = store.connect()
    with champion_guard():  # read and move the alias with no other move in between
        current = require_alias(name, CHAMPION)
        target = current.tags.get(PROMOTION + "previous_champion", "")
        if not target:
            raise RegistryError(
                f"{name} v{current.version} is champion but no earlier champion is recorded for "
                "it (it was the first, or its alias was set by hand); set the alias explicitly "
                f"with set_alias({name!r}, 'champion', VERSION)"
            )
        by, at = current_user(), _now()
        why = reason or "rollback"
        client.get_model_version(name, target)  # fails clearly if it was deleted
        client.set_registered_model_alias(name, CHAMPION, target)
    tag(
        name,
        target,
        **{
            f"{ROLLBACK}at": at,
            f"{ROLLBACK}by": by,
            f"{ROLLBACK}reason": why,
            f"{ROLLBACK}from": str(current.version),
        },
    )
    tag(
        name,
        current.version,
        **{
            f"{ROLLED_BACK}at": at,
            f"{ROLLED_BACK}by": by,
            f"{ROLLED_BACK}reason": why,
            f"{ROLLED_BACK}to": target,
        },
    )
    return RollbackResult(name, str(current.version), target, by, at, why)
