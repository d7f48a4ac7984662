"""Registry: aliases, gated promotion (refused, accepted, override), audit tags, rollback, listing.

Every test runs on its own real SQLite store with two real logged models: a logistic
regression and a depth-1 tree (clearly worse on the held-out rows).
"""

from __future__ import annotations

import numpy as np
import pytest

from workbench import registry
from workbench.core import store


def test_beats_is_direction_aware():
    assert registry.beats("roc_auc", 0.80, 0.75, margin=0.01)
    assert not registry.beats("roc_auc", 0.755, 0.75, margin=0.01)
    assert not registry.beats("roc_auc", 0.75, 0.75)  # a tie is not a win
    assert registry.beats("log_loss", 0.40, 0.45, margin=0.01)  # lower is better
    assert not registry.beats("log_loss", 0.45, 0.40)
    assert registry.beats("auc", 0.9, 0.8)  # canonical spelling is accepted
    with pytest.raises(registry.RegistryError, match="unknown promotion metric 'rmse'"):
        registry.beats("rmse", 1.0, 2.0)


def test_refused_then_override_then_rollback(candidates, model_name):
    c = candidates
    X, y = c.split.X_test, c.split.y_test

    v1 = registry.register(
        c.strong,
        model_name,
        description="logistic regression",
        tags={"algo": "logreg"},
        alias="challenger",
    )
    assert (str(v1.version), v1.description, v1.tags["algo"]) == (
        "1",
        "logistic regression",
        "logreg",
    )
    first = registry.promote(model_name, X, y, metric="roc_auc", margin=0.01)
    assert first.promoted and first.previous_champion is None and first.champion_score is None
    assert registry.aliases(model_name) == {"champion": "1"}, (
        "the challenger alias leaves the promoted version"
    )

    v2 = registry.register(c.weak_run, model_name)  # from a run id: its logged model "model"
    assert v2.run_id == c.weak_run
    registry.set_challenger(model_name, v2.version)
    with pytest.raises(registry.PromotionRefused) as refused:
        registry.promote(model_name, X, y, metric="roc_auc", margin=0.01)
    r = refused.value.result
    assert not r.promoted and r.version == "2" and r.previous_champion == "1"
    assert r.challenger_score < r.champion_score, "the weak tree is worse on the held-out rows"
    message = str(refused.value)
    assert f"{r.challenger_score:.4f}" in message and f"{r.champion_score:.4f}" in message
    assert str(registry.get_version(model_name).version) == "1", (
        "a refusal leaves the champion alone"
    )
    tags = store.connect().get_model_version(model_name, "2").tags
    assert tags["workbench.refused.champion_version"] == "1"
    assert float(tags["workbench.refused.champion_score"]) == pytest.approx(
        r.champion_score, abs=1e-6
    )

    forced = registry.promote(model_name, X, y, override=True, reason="demo of an override")
    assert forced.promoted and forced.override
    assert str(registry.get_version(model_name).version) == "2"
    tags = store.connect().get_model_version(model_name, "2").tags
    assert tags["workbench.promotion.override"] == "true"
    assert tags["workbench.promotion.decision"] == "override"
    assert tags["workbench.promotion.reason"] == "demo of an override"
    assert tags["workbench.promotion.previous_champion"] == "1"
    assert tags["workbench.promotion.by"] == registry.current_user()
    assert tags["workbench.promotion.at"].endswith("+00:00")
    assert float(tags["workbench.promotion.challenger_score"]) == pytest.approx(
        forced.challenger_score, abs=1e-6
    )
    assert (
        store.connect().get_model_version(model_name, "1").tags["workbench.demoted.replaced_by"]
        == "2"
    )

    back = registry.rollback(model_name, reason="override was a mistake")
    assert (back.from_version, back.to_version) == ("2", "1")
    assert str(registry.get_version(model_name).version) == "1"
    assert store.connect().get_model_version(model_name, "1").tags["workbench.rollback.from"] == "2"
    assert (
        store.connect().get_model_version(model_name, "2").tags["workbench.rolled_back.to"] == "1"
    )
    with pytest.raises(registry.RegistryError, match="no earlier champion is recorded"):
        registry.rollback(model_name)

    champion = registry.load(model_name)  # models:/<name>@champion
    raw = X.head(10)
    np.testing.assert_array_equal(
        champion.predict(raw), registry.load_sklearn(model_name).predict(raw)
    )


def test_better_challenger_is_promoted_and_versions_are_listed(candidates, model_name):
    c = candidates
    X, y = c.split.X_test, c.split.y_test
    registry.register(c.weak, model_name, alias="challenger")
    registry.promote(model_name, X, y, metric="log_loss")
    registry.register(c.strong, model_name, alias="challenger", description="better")
    won = registry.promote(model_name, X, y, metric="log_loss", margin=0.01)
    assert won.promoted and not won.override and won.previous_champion == "1"
    assert won.challenger_score < won.champion_score - 0.01, "lower log loss wins"
    assert won.scores["champion"]["roc_auc"] < won.scores["challenger"]["roc_auc"]

    registry.register(c.weak, model_name, alias="challenger")
    kept = registry.promote(model_name, X, y, metric="log_loss", raise_on_refusal=False)
    assert not kept.promoted and "refused" in kept.summary()

    table = registry.list_versions(model_name)
    assert table["version"].tolist() == [1, 2, 3]
    assert table["aliases"].tolist() == ["", "champion", "challenger"]
    assert table.loc[1, "description"] == "better"
    assert table.loc[1, "tags.workbench.promotion.metric"] == "log_loss"
    assert table.loc[1, "run_id"] == c.strong_run and table.loc[1, "model_id"] == c.strong.model_id
    assert table.loc[1, "metrics.val_roc_auc"] > table.loc[0, "metrics.val_roc_auc"]
    assert table.loc[2, "tags.workbench.refused.champion_version"] == "2"


def test_clear_errors(candidates, model_name):
    c = candidates
    registry.register(c.strong, model_name)
    with pytest.raises(registry.RegistryError, match="has no challenger"):
        registry.promote(model_name, c.split.X_test, c.split.y_test)
    with pytest.raises(registry.RegistryError, match="no version with alias 'champion'"):
        registry.load(model_name)
    with pytest.raises(registry.RegistryError, match="no logged model named 'nope'"):
        registry.register(c.strong_run, model_name, artifact_name="nope")
    with pytest.raises(registry.RegistryError, match="give a ModelInfo"):
        registry.register("not-a-run", model_name)


def test_a_champion_that_cannot_be_scored_needs_an_override(candidates, model_name):
    import shutil
    from pathlib import Path
    from urllib.parse import urlparse

    import mlflow

    c = candidates
    X, y = c.split.X_test, c.split.y_test
    registry.register(c.weak, model_name, alias="challenger")
    registry.promote(model_name, X, y)
    location = mlflow.MlflowClient().get_logged_model(c.weak.model_id).artifact_location
    shutil.rmtree(Path(urlparse(location).path))  # the champion's files are lost
    registry.register(c.strong, model_name, alias="challenger")
    with pytest.raises(registry.RegistryError, match="cannot score the champion"):
        registry.promote(model_name, X, y)
    forced = registry.promote(model_name, X, y, override=True, reason="champion files lost")
    assert forced.promoted and forced.override and forced.champion_score is None
    assert "could not be scored" in forced.summary()
    tags = store.connect().get_model_version(model_name, "2").tags
    assert tags["workbench.promotion.decision"] == "override"
    assert tags["workbench.promotion.champion_score"] == ""
