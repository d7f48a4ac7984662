"""Database passwords stay out of ``ps``: the team server, ``workbench ui`` on a PostgreSQL
store and search workers get their URIs through the environment, and every line printed or
written (state file, logs, terminal) masks them.

``/proc/<pid>/cmdline`` is readable by every user of the machine; it is read here for every
process the commands started. The test cluster's trust authentication ignores passwords, so
the URLs carry one without needing a PostgreSQL role to have it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _group(pid: int) -> list[int]:
    import psutil

    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def _with_password(url: str, password: str) -> str:
    return url.replace("://postgres@", f"://postgres:{password}@", 1)


def test_team_server_store_password_is_nowhere_in_clear(team_server):
    pw = team_server.db_password
    assert pw, "the fixture starts the server with a password in its store URI"
    state_file = team_server.project / ".workbench" / "server.json"
    state = json.loads(state_file.read_text())
    pids = _group(state["pid"])
    assert len(pids) >= 3, "mlflow server, uvicorn and its workers"
    for pid in pids:
        assert pw not in _cmdline(pid), f"pid {pid}: {_cmdline(pid)}"
    assert "--backend-store-uri" not in _cmdline(state["pid"])
    assert pw not in state_file.read_text() and "postgres:***@" in state["backend_store_uri"]
    status = team_server.cli("server", "status")
    assert status.returncode == 0 and pw not in status.stdout + status.stderr
    assert "postgres:***@" in status.stdout
    for log in (team_server.project / ".workbench").glob("*.log"):
        assert pw not in log.read_text(errors="replace"), log


def test_ui_on_a_store_with_a_password_shows_it_nowhere(pg, tmp_path):
    pw = f"pw-{secrets.token_hex(8)}"
    store = _with_password(pg.create_database("wb_ui_secret"), pw).replace(
        "postgresql://", "postgresql+psycopg://"
    )
    project = tmp_path / "project"
    project.mkdir()
    from workbench.core.ports import free_port

    port = free_port()
    env = {**os.environ, "WORKBENCH_PROJECT_DIR": str(project), "MLFLOW_TRACKING_URI": store}
    proc = subprocess.Popen(
        [*WORKBENCH, "ui", "--port", str(port)], env=env, cwd=project, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    seen = ""
    try:
        deadline = time.monotonic() + 300
        while "MLflow UI:" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()
        assert "MLflow UI:" in seen, seen
        assert re.search(r"postgres:\*\*\*@", seen) and pw not in seen, seen
        pids = _group(proc.pid)
        assert any("mlflow server" in _cmdline(p) for p in pids)
        for pid in pids:
            assert pw not in _cmdline(pid), f"pid {pid}: {_cmdline(pid)}"
    finally:
        proc.send_signal(signal.SIGTERM)
        seen += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, seen
    assert pw not in seen
    for log in (project / ".workbench").glob("*.log"):
        assert pw not in log.read_text(errors="replace"), log


def test_search_workers_get_the_storage_url_by_environment(
    pg, tracking_uri, experiment_name, tmp_path
):
    from workbench import search, tracking

    pw = f"pw-{secrets.token_hex(8)}"
    storage = _with_password(pg.create_database(f"wb_optuna_{secrets.token_hex(3)}"), pw)
    run = tracking.start_run(experiment_name, algorithm="logreg-search")
    study = search.create_study(
        "logistic_regression", storage=storage, n_rows=400, pruner="none", n_trials=2, seed=1
    )
    procs = search.start_workers(study.name, storage, 1, n_trials=2, log_dir=tmp_path)
    try:
        # Popen returns once the worker's program runs: its command line is final
        for p in procs:
            line = _cmdline(p.pid)
            assert pw not in line and "postgres" not in line, line
        codes = search.wait_workers(procs, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join(f.read_text(errors="replace") for f in tmp_path.glob("worker-*.log"))
    assert codes == [0], logs
    assert pw not in logs
    trials = study.study.get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    run.end()
