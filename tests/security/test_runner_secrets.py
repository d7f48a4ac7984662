"""Secrets passed to ``workbench run`` reach the kernel and nothing else.

An attacker who can read the store, the reports folder or a CI log must not find a password
passed as a notebook parameter. A real ``workbench run`` gets four secrets, named in
snake_case, camelCase, as a token and inside a database URL; the notebook checks (by hash)
that its kernel got the real values, logs them as params and names its run after two of
them. Then every byte the command wrote is searched for the clear values: the run's params,
tags and name, the report files' names and contents (the executed notebook with its
injected parameters cell, its HTML twin, the index pages), the artifacts, the store's
database file and the command's terminal output.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import nbformat
import pytest

from workbench.core import names

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "runner" / "notebooks" / "secrets.ipynb"
WORKBENCH = str(Path(sys.executable).parent / "workbench")
SECRETS = {
    "db_password": "hunter2a",
    "dbPassword": "hunter2b",
    "apiToken": "tok3nvalue",
    "db_url": "postgresql://u:pw4567@h/d",
}
CLEAR = ("hunter2a", "hunter2b", "tok3nvalue", "pw4567")


def _found_in(text: str) -> list[str]:
    return [s for s in CLEAR if s in text]


@pytest.fixture
def project(tmp_path, tracking_uri, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    return tmp_path


def test_secret_parameters_reach_the_kernel_and_nothing_written(project, experiment_name):
    expected = hashlib.sha256("|".join(SECRETS.values()).encode()).hexdigest()
    args = [WORKBENCH, "run", str(NOTEBOOK), "--experiment", experiment_name]
    for name, value in SECRETS.items():
        args += ["-p", name, value]
    args += ["-p", "expect_sha256", expected]
    res = subprocess.run(
        args, cwd=project, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr  # the kernel's check passed

    assert _found_in(res.stdout + res.stderr) == [], res.stdout + res.stderr
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["checked"] == 1.0
    shown = json.loads(run.data.tags[names.TAG_PARAMS])
    assert shown["db_url"] == "postgresql://u:***@h/d" and shown["apiToken"] == "***"
    assert run.data.params["dbPassword"] == "***"  # logged by the notebook, masked
    for where, text in [
        ("params", json.dumps(run.data.params)),
        ("tags", json.dumps(run.data.tags)),
        ("run name", run.info.run_name),
    ]:
        assert _found_in(text) == [], f"{where}: {text}"

    executed = nbformat.read(project / run.data.tags[names.TAG_REPORT], as_version=4)
    (injected,) = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'db_password = "***"' in injected.source
    assert 'db_url = "postgresql://u:***@h/d"' in injected.source
    (check,) = [c for c in executed.cells if "hashlib" in c.source]
    assert "the kernel got the real values" in json.dumps(check.outputs)

    written = [p for p in project.rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in written) and any(
        p.suffix == ".html" for p in written
    )
    assert any("runs_reports" not in p.parts and p.suffix == ".ipynb" for p in written)  # artifact
    for path in written:
        assert _found_in(str(path.relative_to(project))) == [], path
        assert _found_in(path.read_bytes().decode("utf-8", "replace")) == [], path


def test_the_batch_plan_masks_secret_parameters(project, experiment_name):
    batch = project / "secret.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOK}\nexperiment: {experiment_name}\n"
        f"parameters: {json.dumps(SECRETS)}\n"
        "grid: {expect_sha256: [a, b]}\n"
    )
    res = subprocess.run(
        [WORKBENCH, "batch", str(batch), "--dry-run"],
        cwd=project, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 job(s), 2 to run" in res.stdout and "db_url=postgresql://u:***@h/d" in res.stdout
    assert _found_in(res.stdout + res.stderr) == [], res.stdout + res.stderr
