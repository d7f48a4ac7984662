"""Fixtures for team mode: a real PostgreSQL cluster and real ``mlflow server`` processes.

All session-scoped (a PostgreSQL-backed server takes 15-40 s to answer on this machine):
one cluster, one plain server started through the ``workbench server start`` command, and
one server with basic auth, each on its own database and free loopback port, all stopped at
the end of the session.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def _load_pg():
    spec = importlib.util.spec_from_file_location("wb_team_pg", Path(__file__).with_name("pg.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["wb_team_pg"] = module
    spec.loader.exec_module(module)
    return module


pg_helpers = _load_pg()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg():
    """A PostgreSQL 15 cluster on a free loopback port (skip, or fail under CI, if missing)."""
    try:
        cluster = pg_helpers.start_cluster()
    except pg_helpers.PgUnavailable as exc:
        if _in_ci():
            pytest.fail(f"CI=true and PostgreSQL is unavailable: {exc}")
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@dataclass
class TeamServer:
    """A running server: where it answers, its project folder and database."""

    url: str
    port: int
    project: Path
    db: str
    pg: object
    db_password: str = ""  # in the store URI it was started with (trust auth ignores it)

    @property
    def store_url(self) -> str:
        """The store URI it was started with, password included: restart with this one."""
        url = self.pg.url(self.db)
        if not self.db_password:
            return url
        return url.replace("://postgres@", f"://postgres:{self.db_password}@", 1)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess:
        """Run ``workbench ARGS`` with this server's project folder."""
        return run_workbench(*args, project=self.project, env=env, timeout=timeout)


def run_workbench(
    *args: str, project: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    full = {**inherited, "WORKBENCH_PROJECT_DIR": str(project), **(env or {})}
    return subprocess.run(
        [*WORKBENCH, *args],
        env=full,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def run_cli():
    """``run_cli(*args, project=folder)``: run the workbench command in a project folder."""
    return run_workbench


@pytest.fixture(scope="session")
def team_server(pg, tmp_path_factory):
    """``workbench server start`` on PostgreSQL (a plain ``postgresql://`` URL, rewritten to
    psycopg 3 by the workbench); stopped with ``workbench server stop`` at the end.

    The URL carries a password, as a real one would (the test cluster's trust authentication
    ignores it): it must show nowhere, neither in ``ps`` nor in files nor on the terminal."""
    from workbench.core.ports import free_port

    project = tmp_path_factory.mktemp("team-project")
    db_password = f"pw-{secrets.token_hex(8)}"
    pg.create_database("wb_team")
    port = free_port()
    server = TeamServer(
        url=f"http://127.0.0.1:{port}", port=port, project=project, db="wb_team", pg=pg,
        db_password=db_password,
    )  # fmt: skip
    db_url = server.store_url
    env = {"WORKBENCH_SERVER_WORKERS": "2"}
    out = run_workbench(
        "server", "start", "--backend-store-uri", db_url, "--port", str(port),
        "--artifacts-destination", str(project / "team-artifacts"), project=project, env=env,
    )  # fmt: skip
    assert out.returncode == 0, f"server start failed:\n{out.stdout}\n{out.stderr}"
    assert f"export MLFLOW_TRACKING_URI={server.url}" in out.stdout
    assert db_password not in out.stdout + out.stderr
    yield server
    run_workbench("server", "stop", project=project)


@pytest.fixture(scope="session")
def auth_server(pg, tmp_path_factory):
    """A second server with MLflow's basic-auth app; yields (server, admin password)."""
    from workbench import server

    project = tmp_path_factory.mktemp("auth-project")
    db_url = pg.create_database("wb_team_auth")
    password = secrets.token_urlsafe(18)
    state_file = project / ".workbench" / "server.json"
    state = server.launch(
        backend_store_uri=db_url,
        artifacts_destination=str(project / "artifacts"),
        port=server.free_port(),
        auth=True,
        password=password,
        state_file=state_file,
        workers=1,
    )
    yield (
        TeamServer(url=state.url, port=state.port, project=project, db="wb_team_auth", pg=pg),
        password,
    )
    server.shutdown(state_file)


@pytest.fixture
def use_server(monkeypatch):
    """Point this test (env and mlflow's fluent API) at a server: call it with the URL."""
    import mlflow

    from workbench.core import store

    used: list[str] = []

    def point(url: str, username: str | None = None, password: str | None = None) -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
        for var, value in (
            ("MLFLOW_TRACKING_USERNAME", username),
            ("MLFLOW_TRACKING_PASSWORD", password),
        ):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        used.append(url)
        return url

    yield point
    for url in used:
        store.forget(url)
