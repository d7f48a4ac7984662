import mlflow
import pytest

from workbench import tracking
from workbench.core import store
from workbench.tracking.data import load_dataset


def test_run_name_convention():
    import datetime as dt

    name = tracking.run_name("gbm", {"lr": 0.1, "depth": 3}, when=dt.date(2026, 11, 27))
    assert name == "gbm-lr0.1-depth3-20261127"


def test_canonical_names_and_secret_redaction():
    assert tracking.canonical_metric("auc_roc") == "roc_auc"
    assert tracking.canonical_metric("val_f1_score") == "val_f1"
    assert tracking.canonical_metric("val_accuracy") == "val_accuracy"
    assert tracking.redact(
        {"db_password": "x", "api_key": "y", "token": "z", "max_depth": 3, "keyword": "k"}
    ) == {
        "db_password": "***",
        "api_key": "***",
        "token": "***",
        "max_depth": 3,
        "keyword": "k",
    }


def test_start_run_tags_params_dataset_and_ends_finished(tracking_uri, experiment_name):
    ds = load_dataset("churn", seed=3, n_rows=300)
    with tracking.start_run(
        experiment_name,
        algorithm="logreg",
        key_params={"C": 1.0},
        params={"C": 1.0, "secret_token": "hunter2"},
        dataset=ds,
    ) as run:
        assert run.owned
    got = mlflow.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name.startswith("logreg-C1-")
    assert got.data.params["C"] == "1.0"
    assert got.data.params["secret_token"] == "***"
    assert got.data.params["dataset_fingerprint"] == ds.fingerprint
    assert got.data.tags["workbench.dataset.fingerprint"] == ds.fingerprint
    assert got.data.tags["mlflow.source.git.commit"]  # the project is a git checkout
    assert got.inputs.dataset_inputs[0].dataset.digest == ds.fingerprint
    exp = mlflow.get_experiment(got.info.experiment_id)
    assert exp.name == experiment_name


def test_code_that_raises_ends_failed_and_flushes_steps(tracking_uri, experiment_name):
    with (
        pytest.raises(ZeroDivisionError),
        tracking.start_run(experiment_name, algorithm="x") as run,
    ):
        steps = tracking.StepLogger()
        for s in range(10):
            steps.log(s, loss=1 / (s + 1))
        1 / 0  # noqa: B018
    got = mlflow.get_run(run.run_id)
    assert got.info.status == "FAILED"
    history = mlflow.MlflowClient().get_metric_history(run.run_id, "loss")
    assert [m.step for m in history] == list(range(10)), (
        "buffered steps are flushed when the run ends on error"
    )


def test_step_logger_batches_at_most_1000(tracking_uri, experiment_name):
    with tracking.start_run(experiment_name, algorithm="x") as run, tracking.StepLogger() as steps:
        for s in range(1400):
            steps.log(s, train_accuracy=s / 1400, val_accuracy=s / 2800, bad=float("nan"))
        assert steps.logged == 2000  # two full batches written while logging
    assert steps.logged == 2800  # the rest on leaving the block
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.run_id, "val_accuracy")) == 1400
    assert "bad" not in mlflow.get_run(run.run_id).data.metrics


def test_resumes_runner_run_and_leaves_its_ending_to_the_runner(
    tracking_uri, experiment_name, monkeypatch
):
    client = store.connect()
    exp_id = store.experiment_id(experiment_name)
    runner_run = client.create_run(exp_id, run_name="01-manual-tracking-smoke")
    monkeypatch.setenv(tracking.RUN_ID_ENV, runner_run.info.run_id)
    monkeypatch.setenv(tracking.NOTEBOOK_ENV, "notebooks/01-manual-tracking.ipynb")
    with tracking.start_run(experiment_name, algorithm="gbm", params={"a": 1}) as run:
        assert run.run_id == runner_run.info.run_id and not run.owned
        mlflow.log_metric("m", 1.0)
    got = client.get_run(runner_run.info.run_id)
    assert got.info.status == "RUNNING", "the runner, not the notebook, ends its run"
    assert got.data.tags["mlflow.source.name"] == "notebooks/01-manual-tracking.ipynb"
    assert got.info.run_name.startswith("gbm-")
    assert len(client.search_runs([exp_id])) == 1, "no second run"
    mlflow.end_run()
    client.set_terminated(runner_run.info.run_id, "FINISHED")


def test_nested_fluent_runs_land_in_the_parents_experiment(tracking_uri, experiment_name):
    with (
        tracking.start_run(experiment_name, algorithm="parent") as run,
        mlflow.start_run(nested=True) as child,
    ):
        pass
    got = mlflow.get_run(child.info.run_id)
    assert got.info.experiment_id == run.experiment_id != "0"
    assert got.data.tags["mlflow.parentRunId"] == run.run_id


def test_runs_a_notebook_starts_carry_the_notebooks_path(
    tracking_uri, experiment_name, monkeypatch
):
    """Nested and plain fluent runs started in a notebook name the notebook, not
    ipykernel_launcher.py (MLflow's default source for a kernel)."""
    import mlflow

    from workbench.core import store

    monkeypatch.setenv("WORKBENCH_NOTEBOOK", "notebooks/05-model-registry.ipynb")
    exp = store.experiment_id(experiment_name)
    with mlflow.start_run(experiment_id=exp) as parent, mlflow.start_run(nested=True) as child:
        pass
    client = mlflow.MlflowClient()
    for run in (parent, child):
        tags = client.get_run(run.info.run_id).data.tags
        assert tags["mlflow.source.name"] == "notebooks/05-model-registry.ipynb", tags
        assert tags["mlflow.source.type"] == "NOTEBOOK"


def test_git_state_in_one_call_says_what_three_calls_said(tmp_path):
    import subprocess

    from workbench.tracking import git as runs_git

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert tracking.git_state() == runs_git._git_state_by_parts(".")  # the project checkout
    git("init", "-q")
    assert tracking.git_state(tmp_path) == tracking.GitState(None, None, None), "no commit yet"
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.email=a@b.c", "-c", "user.name=n", "commit", "-qm", "first")
    (tmp_path / "b.txt").write_text("untracked files do not make a checkout dirty")
    clean = tracking.git_state(tmp_path)
    assert clean.dirty is False and clean == runs_git._git_state_by_parts(str(tmp_path))
    (tmp_path / "a.txt").write_text("changed")
    git("checkout", "-q", "--detach")
    detached = tracking.git_state(tmp_path)
    assert detached == runs_git._git_state_by_parts(str(tmp_path))
    assert (detached.branch, detached.dirty) == ("HEAD", True)


def test_params_and_dataset_profile_go_in_one_batch_and_a_clash_is_still_refused(
    tracking_uri, experiment_name
):
    from mlflow.exceptions import MlflowException

    ds = load_dataset("churn", seed=3, n_rows=300)
    with tracking.start_run(
        experiment_name, algorithm="gbm", params={"n_rows": 300, "lr": 0.1}, dataset=ds
    ) as run:
        pass
    params = mlflow.get_run(run.run_id).data.params
    assert params["n_rows"] == "300" and params["lr"] == "0.1" and params["dataset"] == ds.name
    with (
        pytest.raises(MlflowException, match="n_rows"),
        tracking.start_run(
            experiment_name, algorithm="gbm", params={"n_rows": 5}, dataset=ds
        ) as refused,
    ):
        pass
    assert mlflow.get_run(refused.run_id).info.status == "FAILED"
