"""What the registry decides and by which rule: the aliases, the audit tag prefixes, the
promotion metrics (``log_loss``: lower is better), ``beats``, and the records a promotion
or rollback returns (``PromotionResult``, ``RollbackResult``, ``PromotionRefused``).

Kept apart from ``registry`` so the rule and the records can be read (and tested) without
the MLflow calls around them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION = "workbench.promotion."  # tags of the promotion that made a version champion
REFUSED = "workbench.refused."  # tags of the last refused promotion of a version
DEMOTED = "workbench.demoted."  # tags on a champion that was replaced
ROLLBACK = "workbench.rollback."  # tags on the version a rollback went back to
ROLLED_BACK = "workbench.rolled_back."  # tags on the version a rollback left
LOWER_IS_BETTER = frozenset({"log_loss"})
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion decided and why; also written to the version's tags."""

    name: str
    version: str
    previous_champion: str | None
    metric: str
    margin: float
    challenger_score: float
    champion_score: float | None
    promoted: bool
    override: bool
    reason: str
    by: str
    at: str
    held_out_rows: int
    held_out_fingerprint: str = ""
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def improvement(self) -> float | None:
        """How much better the challenger is (positive = better), in the metric's units."""
        if self.champion_score is None:
            return None
        return _improvement(self.metric, self.challenger_score, self.champion_score)

    def summary(self) -> str:
        """One line a person can read: the decision and both scores."""
        champ = (
            "no champion yet"
            if self.previous_champion is None
            else f"champion v{self.previous_champion} could not be scored"
            if self.champion_score is None
            else f"champion v{self.previous_champion} {self.metric}={self.champion_score:.4f}"
        )
        verdict = (
            "promoted (override)"
            if self.promoted and self.override
            else "promoted"
            if self.promoted
            else "refused"
        )
        return (
            f"{self.name} v{self.version}: {verdict}; challenger {self.metric}="
            f"{self.challenger_score:.4f} vs {champ} (required margin {self.margin:g}, "
            f"{'lower' if self.metric in LOWER_IS_BETTER else 'higher'} is better)"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.summary()


class PromotionRefused(RegistryError):
    """The challenger did not beat the champion by the required margin."""

    def __init__(self, result: PromotionResult):
        self.result = result
        super().__init__(
            f"promotion refused: {result.summary()}.\n"
            "fix: train a better model, lower the margin, or pass override=True with a "
            "reason (the override is recorded in the version's tags)."
        )

    @property
    def challenger_score(self) -> float:
        return self.result.challenger_score

    @property
    def champion_score(self) -> float | None:
        return self.result.champion_score


@dataclass(frozen=True)
class RollbackResult:
    """Where a rollback moved the champion."""

    name: str
    from_version: str
    to_version: str
    by: str
    at: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: champion rolled back from v{self.from_version} to v{self.to_version}"


def checked_metric(metric: str) -> str:
    from workbench.tracking.runs import canonical_metric

    m = canonical_metric(metric)
    if m not in METRICS:
        raise RegistryError(
            f"unknown promotion metric {metric!r}; use one of: {', '.join(METRICS)}"
        )
    return m


def _improvement(metric: str, challenger: float, champion: float) -> float:
    return champion - challenger if metric in LOWER_IS_BETTER else challenger - champion


def beats(metric: str, challenger: float, champion: float, margin: float = 0.0) -> bool:
    """True when ``challenger`` is strictly better than ``champion`` by at least ``margin``."""
    gain = _improvement(checked_metric(metric), challenger, champion)
    return gain > 0 and gain >= margin
