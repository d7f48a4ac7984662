"""The servers the workbench starts, attacked as an unlucky user or a neighbour would:

- ``ui``, ``lab`` and ``server start`` (without ``--auth``) refuse an address other machines
  reach, and start nothing;
- ``ui`` and ``lab`` leave nothing running, and no port taken, however the command ends:
  Ctrl-C, SIGTERM, SIGHUP, or killed outright with SIGKILL (no cleanup code runs then);
- ``server start --auth`` keeps an admin password with ``%`` and edge spaces exactly: a real
  server accepts that password through MLflow's basic auth, and only that one.

Real commands, real ``mlflow server``, real JupyterLab and a real kernel; nothing mocked.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from workbench.core.ports import free_port, port_free

WORKBENCH = [sys.executable, "-m", "workbench.cli"]
GONE_WITHIN_S = 30.0  # the guard's grace period (10 s) plus slack for two busy cores


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env.pop("JUPYTER_TOKEN", None)
    return {
        **env,
        "WORKBENCH_PROJECT_DIR": str(project),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    return project


def _lan_address() -> str:
    """An address of this machine other machines may reach (a documentation one if none)."""
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "192.0.2.10"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "lan"])
def test_no_unauthenticated_server_on_the_network(tmp_path, host):
    host = _lan_address() if host == "lan" else host
    project = _project(tmp_path)
    port, ui_port = free_port(), free_port()
    commands = {
        "ui": ["ui", "--host", host, "--port", str(port)],
        "lab": ["lab", "--host", host, "--port", str(port), "--ui-port", str(ui_port)],
        "server": ["server", "start", "--backend-store-uri", "sqlite:///team.db",
                   "--host", host, "--port", str(port)],
    }  # fmt: skip
    for name, args in commands.items():
        out = subprocess.run(
            [*WORKBENCH, *args], env=_env(project), cwd=project, capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert f"on {host} without" in out.stderr and "fix:" in out.stderr, (name, out.stderr)
        assert "--auth" in out.stderr and "reverse proxy" in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr
    # nothing was started: no store, no log, no state, the ports still free
    assert not (project / "mlflow.db").exists() and not (project / "team.db").exists()
    assert not list(project.glob(".workbench/*.log"))
    assert not (project / ".workbench" / "server.json").exists()
    assert port_free("127.0.0.1", port) and port_free("127.0.0.1", ui_port)


# ------------------------------------------------------------------ children die with the command


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
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
            return m
    raise AssertionError(f"never printed {pattern!r}; output:\n{seen}")


def _family(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _assert_all_gone(family: list, ports: list[int]) -> None:
    """Every process of ``family`` ends (a zombie counts as ended) and every port is free,
    within GONE_WITHIN_S."""
    import psutil

    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline:
        left = [p for p in family if running(p)]
        if not left and all(port_free("127.0.0.1", p) for p in ports):
            return
        time.sleep(0.5)
    left = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in family if running(p)]
    for p in family:  # leave nothing behind for the next test
        if running(p):
            p.kill()
    pytest.fail(f"left after {GONE_WITHIN_S:.0f} s: {left}; ports {ports}")


def _start_ui(project: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*WORKBENCH, "ui", "--port", str(port)], env=_env(project), cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    _read_until(proc, rf"MLflow UI: http://127\.0\.0\.1:{port}", timeout=240)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"])
def test_ui_dies_with_its_command(tmp_path, sig):
    project = _project(tmp_path)
    port = free_port()
    proc = _start_ui(project, port)
    try:
        family = _family(proc.pid)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "mlflow server" in names and "uvicorn" in names, names
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=60)
        _assert_all_gone(family, [port])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    if sig != "SIGKILL":
        assert proc.returncode == 0, f"{sig}: a clean stop, exit {proc.returncode}"


@pytest.mark.slow
def test_lab_killed_outright_leaves_no_server_and_no_kernel(tmp_path):
    """SIGKILL to ``workbench lab`` with a kernel running: JupyterLab, its kernel (in a
    session of its own), the MLflow UI and its uvicorn all go, and both ports are free."""
    project = _project(tmp_path)
    port, ui_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*WORKBENCH, "lab", "--port", str(port), "--ui-port", str(ui_port)],
        env=_env(project), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        m = _read_until(proc, r"JupyterLab: (http://127\.0\.0\.1:\d+)/lab\?token=(\S+)", 240)
        _read_until(proc, r"MLflow UI:", timeout=30)
        lab_url, headers = m.group(1), {"Authorization": f"token {m.group(2)}"}
        kernel = requests.post(f"{lab_url}/api/kernels", headers=headers, json={}, timeout=60)
        assert kernel.status_code == 201, kernel.text
        family = _wait_for_kernel(proc.pid)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        for part in ("jupyterlab", "ipykernel", "mlflow server", "uvicorn"):
            assert part in names, (part, names)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_all_gone(family, [port, ui_port])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _wait_for_kernel(pid: int, timeout: float = 60) -> list:
    """The command's descendants once a kernel process is among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        family = _family(pid)
        if any("ipykernel" in " ".join(p.cmdline()) for p in family):
            return family
        time.sleep(0.5)
    raise AssertionError("the kernel never started")


# ------------------------------------------------------------------ the admin password, kept exactly


@pytest.mark.slow
def test_admin_password_with_percent_and_spaces_logs_in_on_a_real_server(tmp_path):
    pytest.importorskip("flask_wtf", reason="MLflow's auth extra (mlflow[auth]) is not installed")
    project = _project(tmp_path)
    port = free_port()
    password = " 100% sure %(user)s %s %% pw "  # configparser would fail on this, and strip it
    run = {
        "env": _env(project, MLFLOW_AUTH_ADMIN_PASSWORD=password), "cwd": project,
        "capture_output": True, "text": True, "timeout": 300, "stdin": subprocess.DEVNULL,
    }  # fmt: skip
    start = subprocess.run(
        [*WORKBENCH, "server", "start", "--backend-store-uri", "sqlite:///team.db",
         "--port", str(port), "--auth"], **run,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"

        def login(pw: str) -> requests.Response:
            return requests.get(api, params={"max_results": 1}, auth=("admin", pw), timeout=30)

        assert login(password).status_code == 200, "the password as given logs in"
        assert login(password.strip()).status_code == 401, "spaces are part of it"
        assert login(password.replace("%%", "%")).status_code == 401
        # and it is written nowhere: not in the project's files, not on a command line
        for f in (project / ".workbench").rglob("*"):
            if f.is_file() and f.suffix != ".db":
                assert password.strip() not in f.read_text(errors="replace"), f
        assert password.strip() not in start.stdout + start.stderr
        for p in _server_group(project):
            assert password.strip() not in " ".join(p.cmdline())
    finally:
        stop = subprocess.run([*WORKBENCH, "server", "stop"], **run)
        assert stop.returncode == 0, stop.stderr
    assert port_free("127.0.0.1", port)


def _server_group(project: Path) -> list:
    import json

    import psutil

    pid = json.loads((project / ".workbench" / "server.json").read_text())["pid"]
    return [psutil.Process(pid), *_family(pid)]
