"""A batch on a Dask cluster against the team server on PostgreSQL: the scale-out set-up of
docs/scale-out.md, end to end on one machine (a real ``dask scheduler`` and two workers,
the real PostgreSQL-backed ``mlflow server`` the team tests share)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
import cluster_servers  # noqa: E402  (the cluster tests' own helpers)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKBENCH = [sys.executable, "-m", "workbench.cli"]
TRACKED = Path(__file__).resolve().parents[1] / "runner" / "notebooks" / "tracked.ipynb"


def test_a_cluster_batch_on_the_postgresql_team_server(team_server, use_server, tmp_path):
    url = use_server(team_server.url)
    project = tmp_path / "project"
    project.mkdir()
    experiment = f"team-cluster-{uuid.uuid4().hex[:6]}"
    batch = project / "grid.yaml"
    batch.write_text(
        yaml.safe_dump(
            {"notebook": str(TRACKED), "experiment": experiment, "grid": {"depth": [1, 2, 3]}}
        )
    )
    cluster = cluster_servers.start_cluster(tmp_path / "dask", workers=2)
    try:
        out = subprocess.run(
            [*WORKBENCH, "batch", str(batch), "--cluster", cluster.address],
            cwd=project,
            env={**os.environ, "WORKBENCH_PROJECT_DIR": str(project), "MLFLOW_TRACKING_URI": url},
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    finally:
        cluster.stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params.get("depth") for r in runs) == ["1", "2", "3"], (
        "every parameter set ran once"
    )
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_id, run.data.tags)
        reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert any(p.endswith(".ipynb") for p in reports), reports
        assert any(p.endswith(".html") for p in reports), reports
    assert team_server.db_password not in out.stdout + out.stderr
