import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from workbench import evaluation, models, tracking
from workbench.data import load_dataset, make_pipeline


@pytest.fixture(scope="module")
def fitted():
    split = load_dataset("churn", seed=5, n_rows=1200).split(seed=5)
    pipe = make_pipeline(GradientBoostingClassifier(n_estimators=30, random_state=5), split.X_train)
    return pipe.fit(split.X_train, split.y_train), split


def test_metrics_match_sklearn_and_artifacts_are_logged(tracking_uri, experiment_name, fitted):
    from sklearn.metrics import roc_auc_score

    pipe, split = fitted
    with tracking.start_run(experiment_name, algorithm="gbm") as run:
        metrics = evaluation.evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
    assert set(metrics) == {f"val_{m}" for m in tracking.CANONICAL_METRICS}
    assert metrics["val_roc_auc"] == pytest.approx(
        roc_auc_score(split.y_val, pipe.predict_proba(split.X_val)[:, 1])
    )
    assert 0.6 < metrics["val_roc_auc"] < 1
    stored = mlflow.get_run(run.run_id).data.metrics
    assert stored["val_f1"] == pytest.approx(metrics["val_f1"])
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id, "evaluation/val")}
    assert files == {
        "evaluation/val/confusion_matrix.png",
        "evaluation/val/roc_pr_curves.png",
        "evaluation/val/classification_report.txt",
        "evaluation/val/feature_importance.csv",
    }
    table = mlflow.artifacts.load_text(f"runs:/{run.run_id}/evaluation/val/feature_importance.csv")
    assert table.splitlines()[0] == "feature,importance"
    assert "contract_Month-to-month" in table, "importances are named after the pipeline's features"


def test_log_model_pins_requirements_uses_skops_and_loads_back(
    tracking_uri, experiment_name, fitted, tmp_path
):
    pipe, split = fitted
    with tracking.start_run(experiment_name, algorithm="gbm"):
        info = models.log_model(
            pipe, split.X_val, registered_model_name=f"m-{experiment_name}"[:60]
        )
    assert info.registered_model_version == 1
    flavor = info.flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert any("GradientBoosting" in t or "sklearn" in t for t in flavor["skops_trusted_types"])
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path))
    reqs = (Path(local) / "requirements.txt").read_text().split()
    assert any(r.startswith("scikit-learn==") for r in reqs) and any(
        r.startswith("skops==") for r in reqs
    )
    loaded = models.load_model(info.model_uri)
    raw = split.X_test.head(20)
    np.testing.assert_array_equal(loaded.predict(raw), pipe.predict(raw))
    sk = models.load_sklearn(f"models:/{f'm-{experiment_name}'[:60]}/1")
    np.testing.assert_allclose(sk.predict_proba(raw), pipe.predict_proba(raw))
    assert json.loads(info.signature.to_dict()["inputs"])[0]["type"] in {"double", "long", "string"}


def test_untrusted_types_are_refused_on_load(tracking_uri, experiment_name, tmp_path):
    split = load_dataset("churn", seed=6, n_rows=300).split(seed=6)
    pipe = make_pipeline(LogisticRegression(max_iter=200), split.X_train).fit(
        split.X_train, split.y_train
    )
    with tracking.start_run(experiment_name, algorithm="logreg"):
        info = models.log_model(pipe, split.X_val)
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path))
    import yaml

    mlmodel = next(tmp_path.rglob("MLmodel"))
    spec = yaml.safe_load(mlmodel.read_text())
    spec["flavors"]["sklearn"]["skops_trusted_types"] = ["os.system"]  # a crafted model
    mlmodel.write_text(yaml.safe_dump(spec))
    with pytest.raises(models.ModelLoggingError, match=r"os\.system"):
        models.load_model(str(local))


def test_compact_copy_predicts_the_same_and_leaves_the_model_alone(fitted):
    pipe, split = fitted
    before = pipe[-1].estimators_[0, 0].random_state
    lean = models.compact(pipe)
    assert lean is not pipe and lean[-1].estimators_[0, 0].random_state is None
    assert pipe[-1].estimators_[0, 0].random_state is before, "the original is not changed"
    np.testing.assert_array_equal(
        lean.predict_proba(split.X_test), pipe.predict_proba(split.X_test)
    )
    logreg = make_pipeline(LogisticRegression(), split.X_train).fit(split.X_train, split.y_train)
    assert models.compact(logreg) is logreg


def test_skops_archive_is_made_once_and_skops_is_left_as_it_was(fitted, tmp_path):
    import skops.io as sio

    pipe, split = fitted
    lean = models.compact(pipe)
    payload = models.skops_bytes(lean)
    original = sio.dump
    with models._skops_dump_from(lean, payload):
        sio.dump(lean, tmp_path / "ours.skops")  # what MLflow calls while saving
        sio.dump(pipe, tmp_path / "other.skops")  # any other object still goes to skops
    assert sio.dump is original
    assert (tmp_path / "ours.skops").read_bytes() == payload
    trusted = models.trusted_types(lean, payload)
    for name in ("ours.skops", "other.skops"):
        back = sio.load(tmp_path / name, trusted=sio.get_untrusted_types(file=tmp_path / name))
        np.testing.assert_array_equal(back.predict(split.X_test), pipe.predict(split.X_test))
    assert trusted == sorted(sio.get_untrusted_types(file=tmp_path / "ours.skops"))
