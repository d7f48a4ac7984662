"""start_run's params and dataset are logged on a thread: the run waits for them, an error
there surfaces (at the latest when the run ends) and ends the run FAILED, never RUNNING, and
what the run holds is what the synchronous calls logged."""

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from sklearn.ensemble import GradientBoostingClassifier

from workbench import tracking
from workbench.tracking import data, evaluation, models
from workbench.tracking.data import load_dataset, make_pipeline

# A parameter named like a dataset profile fact, with another value: MLflow refuses to log a
# run's parameter twice with two values, on the background thread here.
CLASH = {"n_rows": 5}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("churn", seed=4, n_rows=600)


@pytest.fixture(scope="module")
def fitted(ds):
    split = ds.split(seed=4)
    pipe = make_pipeline(GradientBoostingClassifier(n_estimators=20, random_state=4), split.X_train)
    return pipe.fit(split.X_train, split.y_train), split


def _status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_a_background_error_is_raised_by_end_and_the_run_ends_failed(
    tracking_uri, experiment_name, ds
):
    run = tracking.start_run(experiment_name, algorithm="gbm", params=CLASH, dataset=ds)
    with pytest.raises(MlflowException, match="n_rows") as raised:
        run.end()
    assert any("background thread" in note for note in raised.value.__notes__)
    assert _status(run.run_id) == "FAILED"
    assert mlflow.active_run() is None
    run.end()  # raised once: ending again is the no-op it always was


def test_a_background_error_is_raised_on_leaving_the_with_block(tracking_uri, experiment_name, ds):
    with (
        pytest.raises(MlflowException, match="n_rows"),
        tracking.start_run(experiment_name, algorithm="gbm", params=CLASH, dataset=ds) as run,
    ):
        pass
    assert _status(run.run_id) == "FAILED"


def test_the_bodys_error_wins_and_notes_the_background_one(tracking_uri, experiment_name, ds):
    with (
        pytest.raises(ZeroDivisionError) as raised,
        tracking.start_run(experiment_name, algorithm="gbm", params=CLASH, dataset=ds) as run,
    ):
        1 / 0  # noqa: B018
    assert any("n_rows" in note for note in raised.value.__notes__)
    assert _status(run.run_id) == "FAILED"


def test_the_next_helper_raises_it_and_ends_the_run_failed(
    tracking_uri, experiment_name, ds, fitted
):
    pipe, split = fitted
    run = tracking.start_run(experiment_name, algorithm="gbm", params=CLASH, dataset=ds)
    with pytest.raises(MlflowException, match="n_rows"):
        evaluation.evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
    assert _status(run.run_id) == "FAILED"
    artifacts = mlflow.MlflowClient().list_artifacts(run.run_id)
    assert artifacts == [], "nothing is logged after the error"
    run.end()


def test_reading_the_run_waits_for_its_params_and_dataset(tracking_uri, experiment_name, ds):
    run = tracking.start_run(experiment_name, algorithm="gbm", params={"lr": 0.1}, dataset=ds)
    assert run.run.data.params["lr"] == "0.1"
    assert run.run.data.params["dataset_fingerprint"] == ds.fingerprint
    assert run.run.inputs.dataset_inputs[0].dataset.digest == ds.fingerprint
    assert run.run.info.status == "RUNNING"
    run.end()
    assert _status(run.run_id) == "FINISHED"


def test_the_dataset_input_is_what_mlflow_log_input_logs(tracking_uri, experiment_name, ds):
    with tracking.start_run(experiment_name, algorithm="gbm", dataset=ds) as ours:
        pass
    with mlflow.start_run(experiment_id=ours.experiment_id) as plain:
        data.log_input(ds)  # the fluent mlflow.log_input of the active run
    client = mlflow.MlflowClient()
    [theirs] = client.get_run(plain.info.run_id).inputs.dataset_inputs
    [mine] = client.get_run(ours.run_id).inputs.dataset_inputs
    assert mine.dataset.to_dictionary() == theirs.dataset.to_dictionary()
    assert [(t.key, t.value) for t in mine.tags] == [(t.key, t.value) for t in theirs.tags]


def test_notebook_01s_run_logs_the_same_files(tracking_uri, experiment_name, ds, fitted):
    pipe, split = fitted
    with tracking.start_run(
        experiment_name, algorithm="gbm", params={"n_estimators": 20}, dataset=ds
    ) as run:
        evaluation.log_learning_curves(pipe, split.X_train, split.y_train, split.X_val, split.y_val)
        evaluation.evaluate_classifier(pipe, split.X_val, split.y_val, prefix="val_")
        evaluation.evaluate_classifier(
            pipe, split.X_test, split.y_test, prefix="test_", artifacts=False
        )
        info = models.log_model(pipe, split.X_train)
    client = mlflow.MlflowClient()

    def files(list_artifacts, path=None) -> set[str]:
        found = set()
        for item in list_artifacts(path):
            found |= files(list_artifacts, item.path) if item.is_dir else {item.path}
        return found

    assert files(lambda p: client.list_artifacts(run.run_id, p)) == {
        "evaluation/learning_curves.csv",
        "evaluation/val/classification_report.txt",
        "evaluation/val/confusion_matrix.png",
        "evaluation/val/feature_importance.csv",
        "evaluation/val/roc_pr_curves.png",
    }
    logged = mlflow.artifacts.list_artifacts(info.model_uri)
    assert {a.path.rsplit("/", 1)[-1] for a in logged} >= {
        "MLmodel",
        "model.skops",
        "requirements.txt",
        "python_env.yaml",
        "conda.yaml",
        "input_example.json",
        "serving_input_example.json",
    }
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["n_estimators"] == "20"
    assert client.get_logged_model(info.model_id).params["n_estimators"] == "20"


def test_the_next_start_run_raises_the_previous_runs_error(tracking_uri, experiment_name, ds):
    first = tracking.start_run(experiment_name, algorithm="gbm", params=CLASH, dataset=ds)
    with pytest.raises(MlflowException, match="n_rows"):
        tracking.start_run(experiment_name, algorithm="gbm")
    assert _status(first.run_id) == "FAILED"
    with tracking.start_run(experiment_name, algorithm="gbm") as second:
        pass
    assert _status(second.run_id) == "FINISHED"
