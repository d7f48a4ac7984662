"""Fixtures for the cluster tests: a real ``mlflow server`` (SQLite, proxied artifacts) and a
real Dask cluster (``dask scheduler`` and two ``dask worker`` processes) on 127.0.0.1.

The server and one cluster live for the session; tests that kill a worker or the scheduler
start a cluster of their own. Workers start without any MLflow or workbench variable: they
learn the tracking server from each task.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cluster_servers as servers
import pytest
from cluster_servers import WORKBENCH


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One ``mlflow server`` for the session (SQLite backend, proxied artifacts)."""
    srv = servers.start_mlflow_server(tmp_path_factory.mktemp("cluster-mlflow"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A scheduler and two workers for the session; tests must not kill them."""
    cluster = servers.start_cluster(tmp_path_factory.mktemp("cluster-dask"), workers=2)
    yield cluster
    cluster.stop()


@pytest.fixture
def own_cluster(tmp_path):
    """A scheduler and two workers for one test (which may kill them)."""
    cluster = servers.start_cluster(tmp_path / "dask", workers=2)
    yield cluster
    cluster.stop()


@pytest.fixture
def project(tmp_path, mlflow_server, monkeypatch) -> Path:
    """A project folder whose tracking store is the server (env and mlflow's fluent API)."""
    import mlflow

    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(folder))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_registry_uri(mlflow_server.url)
    return folder


@pytest.fixture
def cli(project):
    """``cli(*args)``: run ``workbench ARGS`` in the project; ``cli.start`` runs it in the
    background (a Popen) for tests that break the cluster meanwhile."""

    class Cli:
        def __call__(self, *args: str, timeout: float = 240, env=None):
            return subprocess.run(
                [*WORKBENCH, *args],
                cwd=project,
                env={**os.environ, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )

        def start(self, *args: str) -> subprocess.Popen:
            return subprocess.Popen(
                [*WORKBENCH, *args],
                cwd=project,
                env=dict(os.environ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )

    return Cli()
