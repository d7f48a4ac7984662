"""`workbench server start|stop|status` on a real PostgreSQL, and the workbench's helpers
working against it with nothing but MLFLOW_TRACKING_URI changed."""

from __future__ import annotations

import json
import subprocess
import time

import mlflow
import pytest

from workbench import server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_status_says_it_answers_and_names_the_store(team_server):
    out = team_server.cli("server", "status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "answering" in out.stdout
    assert f"127.0.0.1:{team_server.pg.port}/wb_team" in out.stdout
    assert "postgresql+psycopg://" in out.stdout, (
        "a plain postgresql:// URL is rewritten for psycopg 3"
    )
    state = json.loads((team_server.project / ".workbench" / "server.json").read_text())
    assert state["port"] == team_server.port and state["auth"] is False
    assert server.health(team_server.url)


def test_start_refuses_bad_usage_and_starts_nothing(team_server, tmp_path, run_cli):
    # a second start in the same project while ours runs
    again = team_server.cli(
        "server",
        "start",
        "--backend-store-uri",
        "sqlite:///x.db",
        "--port",
        str(server.free_port()),
    )
    assert again.returncode == 2 and "already runs" in again.stderr
    # elsewhere: no store, a busy port, --auth without a password (no terminal to prompt on)
    empty = tmp_path / "empty-project"
    empty.mkdir()
    no_store = run_cli("server", "start", project=empty)
    assert no_store.returncode == 2 and "--backend-store-uri is required" in no_store.stderr
    busy = run_cli(
        "server",
        "start",
        "--backend-store-uri",
        "sqlite:///x.db",
        "--port",
        str(team_server.port),
        project=empty,
    )
    assert busy.returncode == 2 and "already in use" in busy.stderr
    no_pw = run_cli(
        "server",
        "start",
        "--backend-store-uri",
        "sqlite:///x.db",
        "--port",
        str(server.free_port()),
        "--auth",
        project=empty,
    )
    assert no_pw.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in no_pw.stderr
    short = run_cli(
        "server",
        "start",
        "--backend-store-uri",
        "sqlite:///x.db",
        "--auth",
        project=empty,
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": "short"},
    )
    assert short.returncode == 2 and "at least 12" in short.stderr
    assert not (empty / ".workbench" / "server.json").exists()
    assert not (empty / "x.db").exists(), "nothing was started"


def test_stop_leaves_alone_what_start_did_not_start(tmp_path, run_cli):
    """A state file whose pid now belongs to another process (pid reuse): stop must not kill it."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        folder = tmp_path / ".workbench"
        folder.mkdir()
        fake = server.ServerState(
            pid=other.pid, create_time=1.0, host="127.0.0.1", port=1, url="http://127.0.0.1:1",
            backend_store_uri="sqlite:///gone.db", artifacts_destination="-", auth=False, log="-", started_at="-",
        )  # fmt: skip
        (folder / "server.json").write_text(json.dumps(fake.__dict__))
        status = run_cli("server", "status", project=tmp_path)
        assert status.returncode == 1 and "not running" in status.stdout
        stop = run_cli("server", "stop", project=tmp_path)
        assert stop.returncode == 0 and "no longer running" in stop.stdout
        assert other.poll() is None, "stop killed a process it did not start"
        assert not (folder / "server.json").exists()
        nothing = run_cli("server", "stop", project=tmp_path)
        assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout
    finally:
        other.kill()
        other.wait()


def test_stop_then_start_again_keeps_the_data(team_server, use_server, experiment_name):
    """stop ends the whole process group; start on the same database serves the same runs."""
    import psutil

    use_server(team_server.url)
    exp_id = mlflow.create_experiment(experiment_name)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_metric("before_restart", 1.0)
    state = json.loads((team_server.project / ".workbench" / "server.json").read_text())
    group = [state["pid"], *(c.pid for c in psutil.Process(state["pid"]).children(recursive=True))]
    assert len(group) >= 3, "mlflow server, uvicorn and its workers"

    out = team_server.cli("server", "stop")
    assert out.returncode == 0 and "stopped" in out.stdout
    gone = [
        pid
        for pid in group
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert gone == [], f"processes left after stop: {gone}"
    assert not server.health(team_server.url)
    assert team_server.cli("server", "status").returncode == 1

    db_url = team_server.store_url
    out = team_server.cli(
        "server", "start", "--backend-store-uri", db_url, "--port", str(team_server.port),
        "--artifacts-destination", str(team_server.project / "team-artifacts"), env={"WORKBENCH_SERVER_WORKERS": "2"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert mlflow.get_run(run.info.run_id).data.metrics["before_restart"] == 1.0


def test_workbench_helpers_work_against_the_server(team_server, use_server, experiment_name):
    from sklearn.linear_model import LogisticRegression

    from workbench import tracking
    from workbench.tracking import evaluation, models
    from workbench.tracking.data import load_dataset, make_pipeline

    use_server(team_server.url)
    ds = load_dataset("churn", seed=3, n_rows=600)
    split = ds.split(seed=3)
    pipe = make_pipeline(LogisticRegression(max_iter=300), split.X_train).fit(
        split.X_train, split.y_train
    )
    model_name = f"team-{experiment_name}"[:60]
    with tracking.start_run(
        experiment_name, algorithm="logreg", params={"C": 1.0}, dataset=ds
    ) as run:
        with tracking.StepLogger() as steps:
            for step in range(1500):
                steps.log(step, train_loss=1 / (step + 1), train_acc=step / 1500)
        metrics = evaluation.evaluate_classifier(pipe, split.X_val, split.y_val)
        info = models.log_model(pipe, split.X_val, registered_model_name=model_name)

    client = mlflow.MlflowClient()
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:/"), (
        "artifacts go through the server's proxy"
    )
    assert stored.data.params["C"] == "1.0"
    assert stored.data.metrics["val_roc_auc"] == pytest.approx(metrics["val_roc_auc"])
    assert len(client.get_metric_history(run.run_id, "train_accuracy")) == 1500, (
        "train_acc is logged as its canonical name"
    )
    assert len(client.get_metric_history(run.run_id, "train_loss")) == 1500
    files = {a.path for a in client.list_artifacts(run.run_id, "evaluation/val")}
    assert "evaluation/val/confusion_matrix.png" in files
    loaded = models.load_model(info.model_uri)
    raw = split.X_test.head(10)
    assert list(loaded.predict(raw)) == list(pipe.predict(raw))

    # the registry, when the registry module is there
    from workbench import registry

    if hasattr(registry, "set_alias"):
        registry.set_alias(model_name, "champion", 1)
        assert list(registry.load(model_name, "champion").predict(raw)) == list(pipe.predict(raw))
    # the rows really are in PostgreSQL
    rows = team_server.pg.query(
        team_server.db, "SELECT status FROM runs WHERE run_uuid = %s", (run.run_id,)
    )
    assert rows == [("FINISHED",)]


def test_secret_looking_params_are_never_stored_in_clear(team_server, use_server, experiment_name):
    from workbench import tracking

    use_server(team_server.url)
    secret = f"s3cr3t-{time.time_ns()}"
    params = {
        "db_password": secret,
        "api_token": secret,
        "aws_secret_access_key": secret,
        "api_key": secret,
        "lr": 0.1,
    }
    with tracking.start_run(experiment_name, params=params) as run:
        tracking.log_params({"password": secret, "hf-token": secret, "n_estimators": 10})
    stored = mlflow.get_run(run.run_id).data.params
    for name in (
        "db_password",
        "api_token",
        "aws_secret_access_key",
        "api_key",
        "password",
        "hf-token",
    ):
        assert stored[name] == "***", name
    assert stored["lr"] == "0.1" and stored["n_estimators"] == "10"
    # and nowhere in the server's database
    hits = team_server.pg.query(
        team_server.db,
        "SELECT 'params' FROM params WHERE value LIKE %s UNION ALL SELECT 'tags' FROM tags WHERE value LIKE %s",
        (f"%{secret}%", f"%{secret}%"),
    )
    assert hits == []
