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
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION = "workbench.promotion."  # tags of the promotion that made a version champion
REFUSED = "workbench.refused."  # tags of the last refused promotion of a version
DEMOTED = "workbench.demoted."  # tags on a champion that was replaced
ROLLBACK = "workbench.rollback."  # tags on the version a rollback went back to
ROLLED_BACK = "workbench.rolled_back."  # tags on the version a rollback left
LOWER_IS_BETTER = frozenset({"log_loss"})
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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


# ---------------------------------------------------------------- small helpers


def _client() -> MlflowClient:
    from workbench import store

    return store.connect()


def current_user() -> str:
    """Who is acting: the login name, else ``$USER``, else ``unknown``."""
    try:
        return getpass.getuser()
    except Exception:  # getpass raises several types when no user is known
        return os.environ.get("USER") or "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def model_uri(name: str, alias: str = CHAMPION) -> str:
    """``models:/<name>@<alias>``, the URI that always means the version holding the alias."""
    return f"models:/{name}@{alias}"


def _canonical(metric: str) -> str:
    from workbench.tracking import canonical_metric

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
    gain = _improvement(_canonical(metric), challenger, champion)
    return gain > 0 and gain >= margin


# ---------------------------------------------------------------- registering


def register(
    source: ModelInfo | str,
    name: str,
    *,
    description: str | None = None,
    tags: dict[str, Any] | None = None,
    alias: str | None = None,
    artifact_name: str = "model",
) -> ModelVersion:
    """Create a new version of ``name`` from a logged model or a run.

    ``source`` is a ``ModelInfo`` (what ``log_model`` returns), a ``models:/<model_id>`` URI,
    or a run id (its logged model called ``artifact_name`` is used). ``alias`` (e.g.
    ``"challenger"``) is set on the new version.
    """
    import mlflow

    client = _client()
    uri = _source_uri(client, source, artifact_name)
    mv = mlflow.register_model(uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    if description:
        mv = client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def _source_uri(client: MlflowClient, source: ModelInfo | str, artifact_name: str) -> str:
    if hasattr(source, "model_uri"):
        return str(source.model_uri)
    text = str(source)
    if text.startswith("models:/"):
        return text
    run_id = text
    if text.startswith("runs:/"):
        run_id, _, path = text[len("runs:/") :].partition("/")
        artifact_name = path or artifact_name
    if not _RUN_ID.match(run_id):
        raise RegistryError(
            f"cannot register {text!r}: give a ModelInfo from log_model, a models:/<model_id> URI "
            "or a run id"
        )
    run = client.get_run(run_id)
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    named = [m for m in found if m.name == artifact_name]
    if not named:
        names = ", ".join(sorted({m.name for m in found})) or "none"
        raise RegistryError(
            f"run {run_id} has no logged model named {artifact_name!r} (its models: {names}); "
            "pass artifact_name= or the ModelInfo that log_model returned"
        )
    return max(named, key=lambda m: m.creation_timestamp).model_uri


def describe(name: str, version: str | int, description: str) -> ModelVersion:
    """Set the description of a version (shown in the MLflow UI)."""
    return _client().update_model_version(name, str(version), description=description)


def tag(name: str, version: str | int, **tags: Any) -> None:
    """Set tags on a version (values become strings)."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


# ---------------------------------------------------------------- aliases and loading


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` at ``version``."""
    _client().set_registered_model_alias(name, alias, str(version))


def set_challenger(name: str, version: str | int) -> None:
    """Mark ``version`` as the challenger (the candidate ``promote`` reviews by default)."""
    set_alias(name, CHALLENGER, version)


def get_version(name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version holds it."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def aliases(name: str) -> dict[str, str]:
    """``{alias: version}`` of a registered model."""
    return {a: str(v) for a, v in _client().get_registered_model(name).aliases.items()}


def load(name: str, alias: str = CHAMPION):
    """Load ``models:/<name>@<alias>`` as a pyfunc model (predicts on raw rows)."""
    from workbench import models

    _require_alias(name, alias)
    return models.load_model(model_uri(name, alias))


def load_sklearn(name: str, alias: str = CHAMPION):
    """Load the sklearn pipeline behind ``models:/<name>@<alias>`` (for ``predict_proba``)."""
    from workbench import models

    _require_alias(name, alias)
    return models.load_sklearn(model_uri(name, alias))


def _require_alias(name: str, alias: str) -> ModelVersion:
    mv = get_version(name, alias)
    if mv is None:
        have = ", ".join(f"{a}=v{v}" for a, v in aliases(name).items()) or "none"
        raise RegistryError(
            f"model {name!r} has no version with alias {alias!r} (aliases: {have}); "
            f"set one with workbench.registry.set_alias({name!r}, {alias!r}, VERSION) or promote()"
        )
    return mv


# ---------------------------------------------------------------- gated promotion


def score(name: str, version: str | int, X: pd.DataFrame, y) -> dict[str, float]:
    """Classification metrics of one version on ``(X, y)``."""
    import numpy as np

    from workbench import models
    from workbench.evaluation import classification_metrics

    model = models.load_sklearn(f"models:/{name}/{version}")
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
) -> PromotionResult:
    """Make ``version`` (default: the challenger) champion if it beats the champion.

    Both are scored on the same ``(X, y)``; the challenger must be better on ``metric`` by at
    least ``margin``. With no champion yet the first promotion is allowed. ``override=True``
    promotes regardless and is recorded. A refusal raises ``PromotionRefused`` (or, with
    ``raise_on_refusal=False``, returns a result whose ``promoted`` is False).
    """
    metric = _canonical(metric)
    if margin < 0:
        raise RegistryError(f"margin must be >= 0, got {margin}")
    if len(X) == 0 or len(X) != len(y):
        raise RegistryError(
            f"held-out data must be non-empty with one label a row (got {len(X)} rows, {len(y)} labels)"
        )
    client = _client()
    if version is None:
        mv = get_version(name, CHALLENGER)
        if mv is None:
            raise RegistryError(
                f"model {name!r} has no challenger: call set_challenger({name!r}, VERSION) or pass version="
            )
        version = mv.version
    version = str(version)
    client.get_model_version(name, version)  # fails clearly when the version does not exist
    champion = get_version(name, CHAMPION)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        raise RegistryError(f"{name} v{version} is already the champion")

    scores = {"challenger": score(name, version, X, y)}
    if previous is not None:
        try:
            scores["champion"] = score(name, previous, X, y)
        except Exception as exc:
            if not override:
                raise RegistryError(
                    f"cannot score the champion {name} v{previous}: {exc}\nfix: repair it, or "
                    "replace it with override=True and a reason (recorded in the tags)"
                ) from exc
    chall = scores["challenger"][metric]
    champ = scores["champion"][metric] if "champion" in scores else None
    won = previous is None or (champ is not None and beats(metric, chall, champ, margin))
    result = PromotionResult(
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
    if not result.promoted:
        _record(client, name, version, REFUSED, result, champion_version=previous or "")
        if raise_on_refusal:
            raise PromotionRefused(result)
        return result

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
    return result


def _default_reason(previous: str | None, won: bool, override: bool) -> str:
    if previous is None:
        return "first champion"
    if won:
        return "challenger beat the champion"
    return "override" if override else "challenger did not beat the champion"


def _fingerprint(X: pd.DataFrame, y) -> str:
    """Content hash of the held-out rows and labels, so an audit can tell they were the same."""
    from workbench.data import fingerprint

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
    client = _client()
    current = _require_alias(name, CHAMPION)
    target = current.tags.get(PROMOTION + "previous_champion", "")
    if not target:
        raise RegistryError(
            f"{name} v{current.version} is champion but no earlier champion is recorded for it "
            "(it was the first, or its alias was set by hand); set the alias explicitly with "
            f"set_alias({name!r}, 'champion', VERSION)"
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


# ---------------------------------------------------------------- listing


def list_versions(name: str) -> pd.DataFrame:
    """All versions of ``name``: aliases, description, source run, tags and the run's metrics.

    One row a version (oldest first); tags appear as ``tags.<key>`` columns and the source
    run's metrics as ``metrics.<key>`` columns, as in ``mlflow.search_runs``.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        by_version: dict[str, list[str]] = {}
        for alias, v in client.get_registered_model(name).aliases.items():
            by_version.setdefault(str(v), []).append(alias)
    except MlflowException as exc:
        raise RegistryError(f"no registered model named {name!r}: {exc.message}") from exc
    rows = []
    metrics_cache: dict[str, dict[str, float]] = {}
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.run_id and mv.run_id not in metrics_cache:
            try:
                metrics_cache[mv.run_id] = dict(client.get_run(mv.run_id).data.metrics)
            except MlflowException:
                metrics_cache[mv.run_id] = {}
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ", ".join(sorted(by_version.get(str(mv.version), []))),
            "status": mv.status,
            "created": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True),
            "description": mv.description or "",
            "run_id": mv.run_id or "",
            "model_id": _model_id(mv),
        }
        row.update({f"tags.{k}": v for k, v in sorted(mv.tags.items())})
        row.update(
            {f"metrics.{k}": v for k, v in sorted(metrics_cache.get(mv.run_id or "", {}).items())}
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    extra = sorted(c for c in frame.columns if c.startswith(("tags.", "metrics.")))
    ordered = [c for c in frame.columns if c not in extra] + [
        c for c in extra if c.startswith("tags.")
    ]
    ordered += [c for c in extra if c.startswith("metrics.")]
    return frame[ordered].sort_values("version", ignore_index=True)


def _model_id(mv: ModelVersion) -> str:
    """The logged model behind a version (MLflow 3 keeps it in ``source`` as models:/<id>)."""
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    source = mv.source or ""
    return source[len("models:/") :] if source.startswith("models:/m-") else ""
