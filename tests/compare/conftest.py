"""A small store written the article's way: plain MLflow calls, no workbench tags."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def _plain_store(tmp_path_factory):
    """One store per test module (creating a store and its runs takes seconds)."""
    import uuid

    import mlflow

    from workbench.core import store

    uri = f"sqlite:///{tmp_path_factory.mktemp('compare-store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        data = _log_plain_runs(f"plain-{uuid.uuid4().hex[:8]}")
    store.forget(uri)
    return uri, data


@pytest.fixture
def plain_runs(_plain_store, monkeypatch):
    """The module's plain-MLflow store, set as this test's tracking store."""
    import mlflow

    uri, data = _plain_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    return data


def _log_plain_runs(experiment_name):
    """Eight runs logged with plain ``mlflow`` code, plus a parent with two children, one
    NaN metric, missing metrics and a deleted run. Returns (experiment name, {name: run_id})."""
    import mlflow

    mlflow.set_experiment(experiment_name)
    ids: dict[str, str] = {}
    specs = [
        (
            "gbm-lr0.05",
            {"learning_rate": "0.05", "max_depth": "3", "use_smote": "True", "model": "gbm"},
            {"auc_roc": 0.91, "f1_score": 0.60},
        ),
        (
            "gbm-lr0.1",
            {"learning_rate": "0.1", "max_depth": "5", "use_smote": "False", "model": "gbm"},
            {"auc_roc": 0.93, "f1_score": 0.62},
        ),
        (
            "gbm-lr0.2",
            {"learning_rate": "0.2", "max_depth": "5", "use_smote": "False", "model": "gbm"},
            {"auc_roc": 0.93, "f1_score": 0.58},
        ),
        ("logreg-C1", {"C": "1.0", "model": "logreg"}, {"auc_roc": 0.88}),
        ("logreg-nan", {"C": "0.1", "model": "logreg"}, {"auc_roc": float("nan"), "f1_score": 0.1}),
        ("no-metrics", {"model": "dummy"}, {}),
    ]
    for name, params, metrics in specs:
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_params(params)
            if metrics:
                mlflow.log_metrics(metrics)
            mlflow.set_tag("environment", "dev" if "gbm" in name else "prod")
            ids[name] = run.info.run_id
    with mlflow.start_run(run_name="search-parent") as parent:
        mlflow.log_param("model", "gbm")
        ids["search-parent"] = parent.info.run_id
        for i in range(2):
            with mlflow.start_run(run_name=f"trial-{i}", nested=True) as child:
                mlflow.log_params({"learning_rate": str(0.01 * (i + 1)), "model": "gbm"})
                for step in range(3):
                    mlflow.log_metric("auc_roc", 0.8 + 0.01 * step + 0.001 * i, step=step)
                ids[f"trial-{i}"] = child.info.run_id
    with mlflow.start_run(run_name="deleted") as gone:
        mlflow.log_metric("auc_roc", 0.99)
    mlflow.delete_run(gone.info.run_id)
    return experiment_name, ids
