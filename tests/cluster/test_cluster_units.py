"""The cluster pieces that need no cluster: addresses, what a shipment shows, where shipped
files land, and the stores a cluster batch refuses (a real SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_servers import NOTEBOOKS

from workbench.core.config import get_settings
from workbench.core.errors import UsageError
from workbench.run import cluster, cluster_runs, shipping
from workbench.run.jobs import prepare_job


def test_address_is_checked_and_local_means_no_cluster():
    assert cluster.resolve_address("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert cluster.resolve_address("scheduler.lan:8786") == "scheduler.lan:8786"
    assert cluster.resolve_address("local") is None
    with pytest.raises(UsageError, match="tcp://HOST:8786"):
        cluster.resolve_address("http://host:8786/x y")


def test_a_local_store_is_refused_with_the_fix(tracking_uri):
    with pytest.raises(UsageError) as err:
        cluster.check_store(get_settings())
    text = str(err.value)
    assert "workbench server start" in text and "MLFLOW_TRACKING_URI=http://" in text


def test_artifacts_on_the_servers_own_disk_are_refused(tracking_uri, experiment_name):
    from workbench.core import store

    client = store.connect(activate=False)
    exp_id = store.experiment_id(experiment_name)  # a local folder: what workers cannot reach
    with pytest.raises(UsageError, match="proxied artifacts"):
        cluster.check_artifacts(client, {exp_id})


def test_a_shipment_never_shows_its_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    params = tmp_path / "p.yaml"
    params.write_text("lr: 0.3\n")
    job = prepare_job(NOTEBOOKS / "tracked.ipynb", params_files=[str(params)])
    shipment = shipping.pack(job, 0, "b1", shipping.client_env())
    assert shipment.env["MLFLOW_TRACKING_PASSWORD"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(shipment) and "alice" not in repr(shipment)
    assert shipment.params_files == ("p.yaml",)  # inside the project: its relative path
    assert shipment.notebook.startswith("_outside/") and shipment.notebook.endswith(
        "/tracked.ipynb"
    )
    assert set(shipment.files) == {shipment.notebook, "p.yaml"}


def test_shipped_files_land_in_the_batch_folder_only(tmp_path):
    job = prepare_job(NOTEBOOKS / "plain.ipynb")
    data = Path(job.notebook).read_bytes()
    ok = shipping.Shipment(job, "b", 0, "nb/plain.ipynb", (), {"nb/plain.ipynb": data}, {})
    local = shipping.unpack(ok, tmp_path / "batch")
    assert Path(local.notebook) == (tmp_path / "batch" / "nb" / "plain.ipynb").resolve()
    assert Path(local.notebook).read_bytes() == data
    assert job.notebook != local.notebook  # the client's job is left alone
    bad = shipping.Shipment(job, "b", 0, "../evil.ipynb", (), {"../evil.ipynb": data}, {})
    with pytest.raises(ValueError, match="outside the batch folder"):
        shipping.unpack(bad, tmp_path / "batch")
    assert not (tmp_path / "evil.ipynb").exists()


def test_report_links_point_at_the_server_without_credentials():
    url = cluster_runs.report_url("http://bob:pw@mlflow.lan:5000/", "3", "abc", "x-lr=0.1.html")
    assert url == (
        "http://mlflow.lan:5000/#/experiments/3/runs/abc/artifactPath/report/x-lr%3D0.1.html"
        "?workflowType=machine_learning"
    )


def test_the_cluster_comes_from_the_environment_or_pyproject(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_CLUSTER", raising=False)
    (tmp_path / "pyproject.toml").write_text('[tool.workbench]\ncluster = "tcp://sched:8786"\n')
    assert cluster.resolve_address(None) == "tcp://sched:8786"
    monkeypatch.setenv("WORKBENCH_CLUSTER", "tcp://other:8786")
    assert cluster.resolve_address(None) == "tcp://other:8786"
    assert cluster.resolve_address("local") is None  # --cluster local: this machine
