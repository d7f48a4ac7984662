"""Fixtures for the runner tests: a throwaway project folder with its own store and reports."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from runner_helpers import WORKBENCH


@pytest.fixture
def project(tmp_path, tracking_uri, monkeypatch) -> Path:
    """A project folder in tmp: reports land in <tmp>/runs_reports, runs in a fresh store."""
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return tmp_path


@pytest.fixture
def run_cli(project):
    """Run ``workbench ...`` in a subprocess (where exit codes matter); returns the result."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*WORKBENCH, *args],
            cwd=project,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
