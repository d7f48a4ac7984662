import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from workbench.core import store

WORKER = textwrap.dedent(
    """
    import sys, time
    start_at, name, i = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    import mlflow
    from workbench.core import store
    time.sleep(max(0.0, start_at - time.time()))   # all processes hit the fresh store together
    exp_id = store.experiment_id(name)
    store.connect()
    with mlflow.start_run(experiment_id=exp_id, run_name=f"worker-{i}"):
        mlflow.log_metric("worker", i)
    """
)


@pytest.mark.slow
def test_eight_processes_on_a_fresh_store(tracking_uri, experiment_name, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    start_at = time.time() + 6  # imports take a few seconds on two cores
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(start_at), experiment_name, str(i)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in errors), [err[-2000:] for code, err in errors if code]

    client = store.connect()
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"worker-{i}" for i in range(8)]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["worker"] for r in runs) == list(range(8))
    default_runs = client.search_runs(["0"])
    assert default_runs == [], "no run may be misrouted to the Default experiment"


def test_experiment_id_is_stable_and_artifacts_are_local(tracking_uri, experiment_name, tmp_path):
    a = store.experiment_id(experiment_name)
    b = store.experiment_id(experiment_name)
    assert a == b
    exp = mlflow.MlflowClient().get_experiment(a)
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())


def test_deleted_experiment_gives_the_fix(tracking_uri, experiment_name):
    exp_id = store.experiment_id(experiment_name)
    store.connect().delete_experiment(exp_id)
    with pytest.raises(store.StoreError, match="restore"):
        store.experiment_id(experiment_name)


def test_empty_name_and_unopenable_store(tmp_path, monkeypatch):
    with pytest.raises(store.StoreError, match="empty"):
        store.experiment_id("  ")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises((store.StoreError, OSError)):
        store.connect()


@pytest.mark.parametrize("name", ["..\n", "..", "../../etc", ".", "a/../../b", "./.."])
def test_no_experiment_name_puts_artifacts_above_the_artifact_root(tmp_path, monkeypatch, name):
    from workbench.core import store
    from workbench.core.config import get_settings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WORKBENCH_ARTIFACT_ROOT", str(tmp_path / "art"))
    settings = get_settings()
    client = store.connect(settings)
    exp = client.get_experiment(store.experiment_id(name, settings))
    location = Path(exp.artifact_location.removeprefix("file://")).resolve()
    root = (tmp_path / "art").resolve()
    assert location.parent == root, (name, location)
    store.forget(uri)
