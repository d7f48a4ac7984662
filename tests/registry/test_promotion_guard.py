"""Two promotions at once end with one consistent champion, and the audit tags name the user
MLflow authenticates as."""

from __future__ import annotations

import getpass
import threading

import pytest

from workbench import registry
from workbench.core import store
from workbench.registry import promotion


def test_current_user_follows_the_authenticated_mlflow_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials yet
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert registry.current_user() == getpass.getuser()
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = carol\nmlflow_tracking_password = pw\n"
    )
    assert registry.current_user() == "carol", "the credentials file MLflow signs in with"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert registry.current_user() == "alice", "the environment wins, as for MLflow itself"


def test_two_concurrent_promotions_end_with_one_consistent_champion(
    candidates, model_name, monkeypatch
):
    c = candidates
    X, y = c.split.X_test, c.split.y_test
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    registry.register(c.weak, model_name, alias="challenger")
    registry.promote(model_name, X, y)  # v1, the weak tree, is champion
    contenders = [str(registry.register(c.strong, model_name).version) for _ in range(2)]

    # Both promotions judge their version against champion v1 before either moves it.
    barrier = threading.Barrier(2, timeout=120)
    decide = promotion._decide

    def decided_together(*args, **kwargs):
        result = decide(*args, **kwargs)
        barrier.wait()
        return result

    monkeypatch.setattr(promotion, "_decide", decided_together)
    outcomes: dict[str, object] = {}

    def attempt(version: str) -> None:
        try:
            outcomes[version] = registry.promote(model_name, X, y, version=version)
        except Exception as exc:  # noqa: BLE001 - the test reads what each one got
            outcomes[version] = exc

    threads = [threading.Thread(target=attempt, args=(v,)) for v in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    won = [v for v, o in outcomes.items() if isinstance(o, registry.PromotionResult)]
    lost = [v for v, o in outcomes.items() if isinstance(o, registry.RegistryError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner, loser = won[0], lost[0]
    assert f"changed from v1 to v{winner}" in str(outcomes[loser])
    assert "nothing was moved or recorded" in str(outcomes[loser])

    client = store.connect()
    assert registry.aliases(model_name)["champion"] == winner
    tags = client.get_model_version(model_name, winner).tags
    assert tags["workbench.promotion.previous_champion"] == "1"
    assert tags["workbench.promotion.by"] == "alice"
    assert client.get_model_version(model_name, "1").tags["workbench.demoted.replaced_by"] == winner
    loser_tags = client.get_model_version(model_name, loser).tags
    assert not [k for k in loser_tags if k.startswith("workbench.promotion.")], loser_tags

    monkeypatch.setattr(promotion, "_decide", decide)
    again = registry.promote(model_name, X, y, version=loser, raise_on_refusal=False)
    assert again.previous_champion == winner, "promoting again compares with the new champion"


def test_a_rollback_and_a_promotion_do_not_interleave(candidates, model_name):
    c = candidates
    X, y = c.split.X_test, c.split.y_test
    registry.register(c.weak, model_name, alias="challenger")
    registry.promote(model_name, X, y)
    registry.register(c.strong, model_name, alias="challenger")
    registry.promote(model_name, X, y)
    with promotion.champion_guard():  # someone else is moving the champion right now
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (registry.rollback(model_name), done.set()), daemon=True
        )
        worker.start()
        assert not done.wait(1.0), "the rollback waits for the guard"
    worker.join(timeout=60)
    assert done.is_set() and registry.aliases(model_name)["champion"] == "1"


@pytest.fixture(autouse=True)
def _no_stray_credentials(monkeypatch):
    """A developer's own MLFLOW_TRACKING_USERNAME must not decide these tests."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
