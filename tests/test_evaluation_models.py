import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.ensemble import (
    AdaBoostClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
)
from sklearn.linear_model import LogisticRegression

from workbench import tracking
from workbench.core import skops_compat
from workbench.tracking import evaluation, models
from workbench.tracking.data import load_dataset, make_pipeline


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
    with pytest.raises(models.ModelRefused, match=r"os\.system") as refused:
        models.load_model(str(local))
    assert "--trust-model" in str(refused.value) and "trust=True" in str(refused.value)


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
    payload, schema = models.skops_archive(lean)
    trusted = models.trusted_types(lean, payload)
    assert (
        trusted
        == sorted(sio.get_untrusted_types(data=payload))
        == ["numpy.dtype", "sklearn.tree._tree.Tree"]
    )
    assert skops_compat.untrusted_in_schema(schema) == trusted, "schema-only audit is skops' own"
    original_dump, original_load = sio.dump, sio.load
    with skops_compat.serialize_once(lean, payload, trusted):
        sio.dump(lean, str(tmp_path / "ours.skops"))  # what MLflow calls while saving
        sio.dump(pipe, tmp_path / "other.skops")  # any other object still goes to skops
        # MLflow's checks load the file straight back: ours comes from memory ...
        assert sio.load(str(tmp_path / "ours.skops"), trusted=trusted) is lean
        # ... anything else is really read, and untrusted types are still refused
        other = sio.load(tmp_path / "other.skops", trusted=trusted)
        assert other is not lean
        with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
            sio.load(str(tmp_path / "ours.skops"), trusted=trusted[:-1])
    assert (sio.dump, sio.load) == (original_dump, original_load)
    assert (tmp_path / "ours.skops").read_bytes() == payload
    for name in ("ours.skops", "other.skops"):
        back = sio.load(tmp_path / name, trusted=sio.get_untrusted_types(file=tmp_path / name))
        np.testing.assert_array_equal(back.predict(split.X_test), pipe.predict(split.X_test))


def test_learning_curves_are_step_metrics_that_match_the_model(
    tracking_uri, experiment_name, fitted
):
    from sklearn.metrics import accuracy_score, log_loss

    pipe, split = fitted
    n = pipe[-1].n_estimators_
    with tracking.start_run(experiment_name, algorithm="gbm") as run:
        curves = evaluation.log_learning_curves(
            pipe, split.X_train, split.y_train, split.X_val, split.y_val, train_rows=None
        )
        sampled = evaluation.log_learning_curves(
            pipe, split.X_train, split.y_train, split.X_val, split.y_val, train_rows=200, every=5
        )
    assert list(curves.index) == list(range(n))
    assert list(sampled.index) == list(range(0, n, 5))
    last = curves.iloc[-1]
    assert last["val_accuracy"] == pytest.approx(
        accuracy_score(split.y_val, pipe.predict(split.X_val))
    )
    assert last["train_log_loss"] == pytest.approx(
        log_loss(split.y_train, pipe.predict_proba(split.X_train))
    )
    # with every row, the training loss is the one the booster tracked while fitting
    np.testing.assert_allclose(curves["train_log_loss"], pipe[-1].train_score_ / 2, rtol=1e-9)
    # the validation curve always uses every row, sampled training curve or not
    np.testing.assert_allclose(sampled["val_accuracy"], curves["val_accuracy"].iloc[::5])
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.run_id, "learning/val_log_loss")
    assert sorted(m.step for m in history) == sorted([*range(n), *range(0, n, 5)])
    assert mlflow.get_run(run.run_id).data.metrics["learning/val_accuracy"] == pytest.approx(
        last["val_accuracy"]
    )


def test_long_curves_are_thinned_for_the_charts_and_kept_whole_as_csv(
    tracking_uri, experiment_name, fitted
):
    import io

    import pandas as pd

    pipe, split = fitted
    n = pipe[-1].n_estimators_  # 30 stages, at most 7 points: every 5th stage and the last
    with tracking.start_run(experiment_name, algorithm="gbm") as run:
        curves = evaluation.log_learning_curves(
            pipe, split.X_train, split.y_train, split.X_val, split.y_val, max_points=7
        )
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "learning/train_accuracy")
    assert sorted(m.step for m in history) == [0, 5, 10, 15, 20, 25, n - 1]
    by_step = {m.step: m.value for m in history}
    assert by_step[n - 1] == pytest.approx(curves["train_accuracy"].iloc[-1])
    text = mlflow.artifacts.load_text(f"runs:/{run.run_id}/evaluation/learning_curves.csv")
    saved = pd.read_csv(io.StringIO(text), index_col="step")
    assert list(saved.index) == list(range(n))
    np.testing.assert_allclose(saved.to_numpy(), curves.to_numpy())


def test_schema_only_audit_agrees_with_skops_on_other_models(fitted):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from xgboost import XGBClassifier

    _, split = fitted
    for estimator in (
        LogisticRegression(max_iter=200),
        RandomForestClassifier(n_estimators=5, random_state=0),
        XGBClassifier(n_estimators=5, max_depth=2),
    ):
        pipe = make_pipeline(estimator, split.X_train).fit(split.X_train, split.y_train)
        payload, schema = models.skops_archive(models.compact(pipe))
        assert skops_compat.untrusted_in_schema(schema) == sorted(
            sio.get_untrusted_types(data=payload)
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda: GradientBoostingClassifier(n_estimators=15, random_state=0),
        lambda: GradientBoostingClassifier(n_estimators=15, loss="exponential", random_state=0),
        lambda: HistGradientBoostingClassifier(max_iter=15, early_stopping=False),
        lambda: AdaBoostClassifier(n_estimators=15),
    ],
    ids=["gbm", "gbm-exponential", "hist-gbm", "adaboost"],
)
def test_staged_probabilities_match_the_models_own(fitted, make):
    _, split = fitted
    pipe = make_pipeline(make(), split.X_train).fit(split.X_train, split.y_train)
    X = pipe[:-1].transform(split.X_val)
    expected = np.stack([p[:, 1] for p in pipe[-1].staged_predict_proba(X)])
    np.testing.assert_allclose(
        evaluation.staged_positive_proba(pipe[-1], X), expected, rtol=1e-12, atol=1e-15
    )


def test_learning_curves_take_numpy_arrays_too(tracking_uri, experiment_name, fitted):
    pipe, split = fitted
    est = pipe[-1]
    Xt, Xv = pipe[:-1].transform(split.X_train), pipe[:-1].transform(split.X_val)
    with tracking.start_run(experiment_name, algorithm="gbm"):
        curves = evaluation.log_learning_curves(
            est, np.asarray(Xt), np.asarray(split.y_train), np.asarray(Xv), split.y_val,
            train_rows=100, max_points=10,
        )  # fmt: skip
    assert len(curves) == est.n_estimators_
    assert curves["val_accuracy"].iloc[-1] == pytest.approx(
        float(np.mean(est.predict(Xv) == np.asarray(split.y_val)))
    )


def test_evaluation_files_are_what_log_figure_and_log_text_write(
    tracking_uri, experiment_name, fitted
):
    """One upload of the four files, byte for byte what four MLflow calls would store."""
    from sklearn.metrics import classification_report

    pipe, split = fitted
    y_true = np.asarray(split.y_val).astype(int)
    y_prob = pipe.predict_proba(split.X_val)[:, 1]
    y_pred = (y_prob >= 0.5).astype(int)
    with tracking.start_run(experiment_name, algorithm="gbm") as run:
        evaluation.evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
        fig_cm, fig_curves = evaluation._figures(y_true, y_pred, y_prob, " (val)")
        mlflow.log_figure(fig_cm, "plain/confusion_matrix.png")
        mlflow.log_figure(fig_curves, "plain/roc_pr_curves.png")
        report = classification_report(
            y_true, y_pred, target_names=["negative (0)", "positive (1)"], digits=4, zero_division=0
        )
        mlflow.log_text(report, "plain/classification_report.txt")
        table = evaluation.feature_importance(pipe)
        mlflow.log_text(table.to_csv(index=False), "plain/feature_importance.csv")
    root = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id))
    for name in (
        "confusion_matrix.png",
        "roc_pr_curves.png",
        "classification_report.txt",
        "feature_importance.csv",
    ):
        assert (root / "evaluation/val" / name).read_bytes() == (root / "plain" / name).read_bytes()


def test_the_collector_is_paused_for_the_block_and_left_as_it_was():
    import gc

    from workbench.core import collector

    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "an inner block does not restart it early"
    assert gc.isenabled()
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled(), "a caller that disabled it keeps it disabled"
    finally:
        gc.enable()


def test_evaluation_figures_leave_nothing_in_the_old_generation(
    tracking_uri, experiment_name, fitted
):
    """A figure is thousands of objects in reference cycles: drawn with the collector
    paused, none of them is promoted to the generation only a full collection frees."""
    import gc

    pipe, split = fitted
    y_true = np.asarray(split.y_val).astype(int)
    y_prob = pipe.predict_proba(split.X_val)[:, 1]
    y_pred = (y_prob >= 0.5).astype(int)
    evaluation._figure_pngs(y_true, y_pred, y_prob, " (val)")  # imports, caches
    gc.collect()
    before = len(gc.get_objects(generation=2))
    for _ in range(3):
        evaluation._figure_pngs(y_true, y_pred, y_prob, " (val)")
    assert len(gc.get_objects(generation=2)) - before < 500


@pytest.mark.filterwarnings("ignore::UserWarning")  # one class only: sklearn says so for AUCs
def test_counted_metrics_are_scikit_learns_to_the_last_bit():
    from sklearn import metrics as m

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    for y_pred in (rng.integers(0, 2, 500), np.zeros(500, int), np.ones(500, int), y, 1 - y):
        got = evaluation.classification_metrics(y, y_pred, rng.random(500))
        assert got["accuracy"] == m.accuracy_score(y, y_pred)
        assert got["precision"] == m.precision_score(y, y_pred, zero_division=0)
        assert got["recall"] == m.recall_score(y, y_pred, zero_division=0)
        assert got["f1"] == m.f1_score(y, y_pred, zero_division=0)
    none_positive = evaluation.classification_metrics(np.zeros(4, int), np.zeros(4, int), [0.1] * 4)
    assert none_positive["recall"] == 0.0 and none_positive["f1"] == 0.0


def test_evaluation_reuses_the_curves_last_stage_only_while_it_holds(tracking_uri, experiment_name):
    split = load_dataset("churn", seed=6, n_rows=900).split(seed=6)
    pipe = make_pipeline(GradientBoostingClassifier(n_estimators=25, random_state=6), split.X_train)
    pipe.fit(split.X_train, split.y_train)
    X_val = split.X_val.copy()
    with tracking.start_run(experiment_name, algorithm="gbm"):
        plain = evaluation.evaluate_classifier(pipe, X_val, split.y_val, artifacts=False)
        evaluation.log_learning_curves(pipe, split.X_train, split.y_train, X_val, split.y_val)
        remembered = evaluation.remembered_proba(pipe, X_val)
        np.testing.assert_array_equal(remembered, pipe.predict_proba(X_val)[:, 1])
        assert evaluation.evaluate_classifier(pipe, X_val, split.y_val, artifacts=False) == plain
        assert evaluation.remembered_proba(pipe, X_val.copy()) is None, "other rows"
        X_val.iloc[0, 0] = X_val.iloc[1, 0]
        assert evaluation.remembered_proba(pipe, X_val) is None, "rows changed in place"
        evaluation.log_learning_curves(pipe, split.X_train, split.y_train, X_val, split.y_val)
        pipe[-1].set_params(warm_start=True, n_estimators=30).fit(
            pipe[:-1].transform(split.X_train), split.y_train
        )
        assert evaluation.remembered_proba(pipe, X_val) is None, "more stages since"
        evaluation.log_learning_curves(
            pipe, split.X_train, split.y_train, X_val, split.y_val, every=4
        )
        assert evaluation.remembered_proba(pipe, X_val) is None, "30 stages: 28 is the last kept"
