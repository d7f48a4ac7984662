"""MLflow's basic-auth app behind `workbench server start --auth`: anonymous requests are
refused, the right credentials work, and a user without permission cannot write."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_anonymous_requests_are_refused(auth_server):
    srv, _ = auth_server
    api = f"{srv.url}/api/2.0/mlflow"
    assert requests.get(f"{srv.url}/health", timeout=10).status_code == 200, (
        "health stays open for probes"
    )
    read = requests.get(f"{api}/experiments/search", params={"max_results": 1}, timeout=10)
    write = requests.post(f"{api}/experiments/create", json={"name": "anonymous"}, timeout=10)
    assert read.status_code == 401 and write.status_code == 401
    wrong = requests.get(
        f"{api}/experiments/search",
        params={"max_results": 1},
        auth=("admin", "not-the-password"),
        timeout=10,
    )
    assert wrong.status_code == 401


def test_admin_password_is_not_left_on_disk(auth_server):
    srv, password = auth_server
    ini = next((srv.project / ".workbench").glob("auth-*/basic_auth.ini"))
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    assert password not in ini.read_text(), (
        "the bootstrap password is removed once the admin exists"
    )
    for log in (srv.project / ".workbench").glob("*.log"):
        assert password not in Path(log).read_text(errors="replace")


def test_credentials_work_and_permissions_are_enforced(auth_server, use_server, experiment_name):
    from workbench import tracking

    srv, password = auth_server
    use_server(srv.url, "admin", password)
    with (
        tracking.start_run(experiment_name, params={"lr": 0.1}) as run,
        tracking.StepLogger() as steps,
    ):
        for step in range(10):
            steps.log(step, loss=1 / (step + 1))
    assert mlflow.get_run(run.run_id).info.status == "FINISHED"
    exp_id = run.experiment_id

    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=srv.url)
    user, user_pw = f"alice{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    auth.create_user(user, user_pw)

    # alice may read (default permission READ) but not write to admin's experiment
    use_server(srv.url, user, user_pw)
    client = mlflow.MlflowClient()
    assert client.get_run(run.run_id).data.params["lr"] == "0.1"
    with pytest.raises(MlflowException) as denied:
        client.create_run(exp_id)
    assert denied.value.get_http_status_code() == 403
    with pytest.raises(MlflowException):
        client.log_metric(run.run_id, "sneaky", 1.0)
    assert "sneaky" not in client.get_run(run.run_id).data.metrics

    # once admin grants EDIT on that experiment, she can
    use_server(srv.url, "admin", password)
    auth.grant_user_permission(user, "experiment", exp_id, "EDIT")
    use_server(srv.url, user, user_pw)
    new = mlflow.MlflowClient().create_run(exp_id)
    mlflow.MlflowClient().set_terminated(new.info.run_id)
    assert mlflow.MlflowClient().get_run(new.info.run_id).info.status == "FINISHED"


def test_a_stale_run_sweep_passes_over_another_users_run(auth_server, use_server, experiment_name):
    """User B's sweep meets user A's stale run (403: B may read it, not change it) and goes
    on: B's own stale run is marked KILLED, A's is a note and stays as it was."""
    import socket
    import subprocess

    from mlflow.server import get_app_client

    from workbench.core import processes
    from workbench.core.names import TAG_HOST, TAG_PID, TAG_PSTART
    from workbench.run.recovery import recover_stale_runs

    srv, password = auth_server
    use_server(srv.url, "admin", password)
    auth = get_app_client("basic-auth", tracking_uri=srv.url)
    users = {name: (f"{name}{secrets.token_hex(3)}", secrets.token_urlsafe(16)) for name in "ab"}
    for user, pw in users.values():
        auth.create_user(user, pw)
    dead = subprocess.Popen(["true"])
    stale_tags = {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(dead.pid),
        TAG_PSTART: processes.start_ticks(dead.pid),
    }
    dead.wait()

    stale = {}
    for name, (user, pw) in users.items():  # each user's own experiment, with a stale run
        use_server(srv.url, user, pw)
        client = mlflow.MlflowClient()
        exp_id = client.create_experiment(f"{experiment_name}-{name}")
        stale[name] = client.create_run(exp_id, tags=stale_tags).info.run_id

    use_server(srv.url, *users["b"])
    client = mlflow.MlflowClient()
    notes: list[str] = []
    killed = recover_stale_runs(client, notes)
    assert stale["b"] in killed and stale["a"] not in killed
    assert client.get_run(stale["b"]).info.status == "KILLED"
    assert client.get_run(stale["a"]).info.status == "RUNNING", "B changed nothing of A's"
    assert any(stale["a"] in n for n in notes), notes

    use_server(srv.url, *users["a"])  # A's own sweep may, and does, end it
    assert stale["a"] in recover_stale_runs(mlflow.MlflowClient())
