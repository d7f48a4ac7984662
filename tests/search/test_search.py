"""Search in one process: nested child runs with states, pruning, the summary on the parent,
and malformed spaces refused before anything runs."""

from __future__ import annotations

import mlflow
import pytest

from workbench import search, tracking
from workbench.search.spaces import SearchSpaceError, parse_dim, resolve_space


def _children(parent_run_id: str) -> dict[str, mlflow.entities.Run]:
    return {r.info.run_name: r for r in search.child_runs(parent_run_id)}


def test_trials_are_nested_child_runs_with_states(tracking_uri, experiment_name, monkeypatch):
    monkeypatch.setenv("WORKBENCH_NOTEBOOK", "notebooks/03-hyperparameter-search.ipynb")
    run = tracking.start_run(experiment_name, algorithm="logreg-search")
    space = {
        "C": ["float", 0.01, 10.0, "log"],
        "solver": ["categorical", "lbfgs", "no-such-solver"],
    }
    s = search.create_study(
        "logistic_regression",
        space=space,
        n_rows=800,
        pruner="none",
        seed=3,
        start_from_defaults=False,
    )
    s.study.enqueue_trial({"C": 1.0, "solver": "no-such-solver"})  # fails inside the estimator
    s.study.enqueue_trial({"C": 0.5, "solver": "lbfgs"})
    s.optimize(n_trials=4)
    result = s.finish()
    run.end()

    children = _children(run.run_id)
    assert sorted(children) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == run.run_id
        assert child.info.status != "RUNNING"
        # the runs list says where each trial came from, like its parent
        assert child.data.tags["mlflow.source.name"] == "notebooks/03-hyperparameter-search.ipynb"
    failed = children["trial-0"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags[search.STATE_TAG] == "failed"
    assert "no-such-solver" in failed.data.tags["workbench.trial.error"]
    done = children["trial-1"]
    assert done.info.status == "FINISHED" and done.data.tags[search.STATE_TAG] == "complete"
    assert {"C": "0.5", "solver": "lbfgs"}.items() <= done.data.params.items()
    assert {"cv_roc_auc", "cv_roc_auc_std", "duration_s"} <= set(done.data.metrics)
    assert 0.5 < done.data.metrics["cv_roc_auc"] <= 1.0

    assert result.counts["failed"] >= 1 and result.counts["complete"] >= 1
    parent = mlflow.get_run(run.run_id)
    assert parent.data.params["best_C"] == str(result.best_params["C"])
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert parent.data.metrics["best_cv_roc_auc"] == pytest.approx(result.best_value)
    assert parent.data.params["search_family"] == "logistic_regression"
    best_child = children[f"trial-{result.best_trial}"]
    assert best_child.data.tags.get("workbench.search.best") == "true"
    assert result.best_run_id == best_child.info.run_id
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id, "search")}
    assert {"search/optimization_history.png", "search/slice.png", "search/trials.csv"} <= artifacts
    assert "val_roc_auc" in result.val_metrics

    from workbench.tracking.models import load_model

    predictions = load_model(result.model_uri).predict(s.split.X_test.head(3))
    assert len(predictions) == 3


@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_pruner_prunes_hopeless_xgboost_trials(tracking_uri, experiment_name, pruner):
    run = tracking.start_run(experiment_name, algorithm="xgb-search")
    space = {"learning_rate": ["float", 0.05, 0.3, "log"], "colsample_bytree": ["float", 0.05, 1.0],
             "max_depth": ["int", 1, 6], "n_estimators": 200}  # fmt: skip
    s = search.create_study(
        "xgboost", space=space, n_rows=1500, pruner=pruner, seed=0, start_from_defaults=False
    )
    good = {"learning_rate": 0.2, "colsample_bytree": 1.0, "max_depth": 4}
    hopeless = {"learning_rate": 0.05, "colsample_bytree": 0.05, "max_depth": 1}  # 1 feature a tree
    for params in (good, good, good, hopeless, hopeless):
        s.study.enqueue_trial(params)
    s.optimize(n_trials=5)
    run.end()

    states = [t.state.name for t in s.study.trials]
    # median waits for 3 finished trials; successive halving judges from the first rung on
    assert states[: 3 if pruner == "median" else 1] == ["COMPLETE"] * (
        3 if pruner == "median" else 1
    )
    assert "PRUNED" in states[3:], states
    children = _children(run.run_id)
    for t in s.study.trials:
        child = children[f"trial-{t.number}"]
        if t.state.name == "PRUNED":
            assert child.info.status == "KILLED"
            assert child.data.tags[search.STATE_TAG] == "pruned"
            assert child.data.metrics["pruned_at_step"] >= 30  # the warm-up rounds
            assert "cv_roc_auc" not in child.data.metrics  # a partial score is not a result
        history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "intermediate_value")
        assert len(history) >= 3  # reported every 10 rounds, logged as a step curve


MALFORMED = [
    ({"max_depth": ["int", 8, 2]}, "low (8) must be below high (2)"),
    ({"learning_rate": ["float", 0.0, 0.3, "log"]}, "log scale needs low > 0"),
    ({"max_depth": ["integer", 2, 8]}, "must start with 'int', 'float' or 'categorical'"),
    ({"max_depht": ["int", 2, 8]}, "does not have: max_depht"),
    ({"max_depth": ["int", 2.5, 8]}, "whole numbers"),
    ({"subsample": ["float", 0.5]}, "is malformed"),
    ({"booster": ["categorical"]}, "no choices"),
    ({"subsample": {"low": 0.5}}, "got a mapping"),
    ({"learning_rate": ["float", 0.01, 0.3, "cubic"]}, "must be 'log' or a positive step"),
    (["max_depth", 2, 8], "must be a mapping"),
]


def test_malformed_space_is_refused_before_any_trial(tracking_uri, experiment_name):
    run = tracking.start_run(experiment_name, algorithm="bad-space")
    for space, message in MALFORMED:
        with pytest.raises(SearchSpaceError) as info:
            search.create_study("xgboost", space=space, n_rows=200)
        assert message in str(info.value), (space, str(info.value))
    run.end()
    assert search.child_runs(run.run_id) == []
    assert not any(k.startswith("search_") for k in mlflow.get_run(run.run_id).data.params)


def test_space_parsing_and_other_refusals(tracking_uri, experiment_name):
    assert parse_dim("x", 3) is None  # a fixed value
    assert parse_dim("x", ["float", 0.01, 0.3, "log"]).log
    assert parse_dim("x", ["int", 2, 8, 2]).step == 2
    assert parse_dim("x", ["cat", [None, "balanced"]]).choices == (None, "balanced")
    space = resolve_space(
        "gbm", {"max_depth": ["int", 2, 3], "subsample": "default", "n_estimators": 50}
    )
    assert space.family == "gradient_boosting"
    assert "subsample" not in space.dims and space.fixed == {"n_estimators": 50}
    with pytest.raises(SearchSpaceError, match="unknown model family"):
        resolve_space("catboost")
    with pytest.raises(SearchSpaceError, match="unknown pruner"):
        search.create_study("rf", pruner="hyperband", n_rows=200, parent_run_id="unused")
    with pytest.raises(search.SearchError, match="no parent run"):
        search.create_study("rf", n_rows=200)


def test_storage_urls_are_normalized_and_redacted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert search.normalize_storage("") is None and search.storage_kind(None) == "memory"
    assert (
        search.normalize_storage("journal:runs/study.log")
        == f"journal:{tmp_path / 'runs' / 'study.log'}"
    )
    pg = search.normalize_storage("postgresql://ana:s3cret@db.example:5432/optuna")
    assert pg == "postgresql+psycopg://ana:s3cret@db.example:5432/optuna"
    assert search.storage_kind(pg) == "rdb"
    assert "s3cret" not in search.redact_url(pg) and "db.example" in search.redact_url(pg)
