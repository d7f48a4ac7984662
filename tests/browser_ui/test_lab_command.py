"""`workbench lab`: JupyterLab and the MLflow UI on loopback, Jupyter behind a token, both
stopped by one signal with nothing left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.slow


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> tuple[re.Match, str]:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        if m := re.search(pattern, line):
            return m, seen
    raise AssertionError(f"`workbench lab` never printed {pattern!r}; output:\n{seen}")


def test_lab_starts_both_with_a_token_and_stops_both(tmp_path, monkeypatch):
    import psutil

    from workbench.core.ports import free_port

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "notebooks" / "hello.ipynb").write_text(
        '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    )
    env = {
        **os.environ,
        "WORKBENCH_PROJECT_DIR": str(project),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    env.pop("JUPYTER_TOKEN", None)
    port, ui_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "lab", "--port", str(port), "--ui-port", str(ui_port)],
        env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        m, _ = _read_until(
            proc, r"JupyterLab: (http://127\.0\.0\.1:\d+)/lab\?token=(\S+)", timeout=240
        )
        lab_url, token = m.group(1), m.group(2)
        ui_m, _ = _read_until(proc, r"MLflow UI:\s+(http://127\.0\.0\.1:\d+)", timeout=30)
        ui_url = ui_m.group(1)
        assert lab_url.endswith(f":{port}") and ui_url.endswith(f":{ui_port}")
        assert len(token) >= 24, "a generated token, not an empty one"

        # Jupyter wants the token; with it, it serves notebooks/ as its root
        assert requests.get(f"{lab_url}/api/contents", timeout=10).status_code == 403
        listing = requests.get(
            f"{lab_url}/api/contents", headers={"Authorization": f"token {token}"}, timeout=10
        )
        assert listing.status_code == 200
        assert [c["name"] for c in listing.json()["content"]] == ["hello.ipynb"]
        # the MLflow UI answers on the configured store, which was prepared (migrated) first
        assert requests.get(f"{ui_url}/health", timeout=10).status_code == 200
        assert (project / "mlflow.db").exists()
        # the token is not on any command line
        family = psutil.Process(proc.pid).children(recursive=True)
        assert all(token not in " ".join(p.cmdline()) for p in family)
    finally:
        family = (
            [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            if proc.poll() is None
            else []
        )
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest
    assert "stopping JupyterLab and the MLflow UI" in rest
    left = [
        p
        for p in family
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert left == [], f"processes left behind: {left}"
    for url in (lab_url, ui_url):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
