"""The team server's state file and lock: two concurrent starts give one server and one
clear refusal; the state is written atomically and privately; a pid is ours only with the
start ticks recorded for it (a stale or reused pid is not, a wall-clock step changes
nothing); an older state file (create_time, no ticks) is still read.

Real processes and a real ``mlflow server`` on SQLite (no PostgreSQL needed here)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from workbench import server
from workbench.core import processes
from workbench.core.ports import free_port, port_free

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env["WORKBENCH_PROJECT_DIR"] = str(project)
    return subprocess.run(
        [*WORKBENCH, *args], env=env, cwd=project, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _state(pid: int, **fields) -> server.ServerState:
    base = {
        "pid": pid, "host": "127.0.0.1", "port": 1, "url": "http://127.0.0.1:1",
        "backend_store_uri": "sqlite:///gone.db", "artifacts_destination": "-", "auth": False,
        "log": "-", "started_at": "-",
    }  # fmt: skip
    return server.ServerState(**{**base, **fields})


class Sleeper:
    """A live process in its own session, not our child (as a detached server is not)."""

    def __init__(self) -> None:
        out = subprocess.run(
            ["sh", "-c", "setsid sleep 120 >/dev/null 2>&1 & echo $!"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.pid = int(out.stdout.strip())
        self.ticks = processes.start_ticks(self.pid)

    def alive(self) -> bool:
        return processes.alive(self.pid, self.ticks)

    def stop(self) -> None:
        if self.alive():
            os.kill(self.pid, 9)


@pytest.fixture
def sleeper():
    proc = Sleeper()
    yield proc
    proc.stop()


@pytest.mark.slow
def test_two_concurrent_starts_give_one_server_and_one_refusal(tmp_path):
    import psutil

    project = tmp_path / "project"
    project.mkdir()
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env["WORKBENCH_PROJECT_DIR"] = str(project)
    procs = [
        subprocess.Popen(
            [*WORKBENCH, "server", "start", "--backend-store-uri", "sqlite:///team.db", "--port", str(p)],
            env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for p in ports
    ]  # fmt: skip
    try:
        outs = [p.communicate(timeout=300) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], outs
        loser = next(err for (out, err), p in zip(outs, procs, strict=True) if p.returncode == 2)
        assert "already runs" in loser and "workbench server stop" in loser, loser
        state = json.loads((project / ".workbench" / "server.json").read_text())
        winner_port = state["port"]
        assert server.health(f"http://127.0.0.1:{winner_port}")
        other = next(p for p in ports if p != winner_port)
        assert port_free("127.0.0.1", other), "the refused start started nothing"
        servers = [
            p for p in psutil.process_iter(["cmdline"])
            if "mlflow" in (p.info["cmdline"] or []) and "server" in (p.info["cmdline"] or [])
            and any(str(port) in p.info["cmdline"] for port in ports)
        ]  # fmt: skip
        assert [p.pid for p in servers] == [state["pid"]], "exactly one server runs"
    finally:
        stop = _cli(project, "server", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert all(port_free("127.0.0.1", p) for p in ports)


def test_a_stale_pid_is_not_running(tmp_path):
    """The recorded process ended: status says not running, stop clears the record."""
    gone = subprocess.Popen(["true"])
    ticks = processes.start_ticks(gone.pid)
    gone.wait()
    folder = tmp_path / ".workbench"
    server.write_state(folder / "server.json", _state(gone.pid, start_ticks=ticks or "1"))
    status = _cli(tmp_path, "server", "status")
    assert status.returncode == 1 and "not running (stale state)" in status.stdout, status.stdout
    stop = _cli(tmp_path, "server", "stop")
    assert stop.returncode == 0 and "no longer running" in stop.stdout
    assert not (folder / "server.json").exists()


def test_a_reused_pid_is_not_ours_and_is_left_alone(tmp_path, sleeper):
    """A live process with the recorded pid but other start ticks (the pid was reused)."""
    folder = tmp_path / ".workbench"
    real = processes.start_ticks(sleeper.pid)
    server.write_state(folder / "server.json", _state(sleeper.pid, start_ticks=str(int(real) - 7)))
    status = _cli(tmp_path, "server", "status")
    assert status.returncode == 1 and "not running" in status.stdout
    stop = _cli(tmp_path, "server", "stop")
    assert stop.returncode == 0 and "no longer running" in stop.stdout
    assert sleeper.alive(), "stop killed a process it did not start"


def test_ownership_follows_start_ticks_not_the_wall_clock(tmp_path, sleeper):
    """The clock was stepped an hour since the start: create_time disagrees, ticks do not."""
    import psutil

    stepped = psutil.Process(sleeper.pid).create_time() + 3600
    state = _state(sleeper.pid, start_ticks=processes.start_ticks(sleeper.pid), create_time=stepped)
    assert state.is_ours()
    server.write_state(tmp_path / ".workbench" / "server.json", state)
    status = _cli(tmp_path, "server", "status")
    assert "running but not answering" in status.stdout, status.stdout
    stop = _cli(tmp_path, "server", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not sleeper.alive()


def test_an_older_state_file_is_still_read(tmp_path, sleeper):
    """Written before start ticks were recorded: create_time identifies the process, and a
    field this version does not know is ignored."""
    import psutil

    old = asdict(_state(sleeper.pid))
    del old["start_ticks"]
    old["create_time"] = psutil.Process(sleeper.pid).create_time()
    old["written_by"] = "a future workbench"
    path = tmp_path / ".workbench" / "server.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    state = server.read_state(path)
    assert state is not None and state.pid == sleeper.pid and state.is_ours()
    assert not server.ServerState(**{**asdict(state), "create_time": 1.0}).is_ours()


def test_the_state_is_written_atomically_and_privately(tmp_path):
    path = tmp_path / ".workbench" / "server.json"
    server.write_state(path, _state(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    with pytest.raises(TypeError):
        server.write_private(path, object())  # fails mid-write
    assert path.read_text() == before, "a failed write leaves the old state whole"
    assert [p.name for p in path.parent.iterdir()] == ["server.json"], "no temporary file left"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_start_ended_while_waiting_leaves_no_unmanaged_server(tmp_path, sig):
    """Until it answers the server belongs to `start`: SIGTERM stops it and clears the
    record. SIGKILL runs no cleanup, but the server was recorded first: `stop` finds it."""
    import signal
    import time

    import psutil

    project = tmp_path / "project"
    project.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env["WORKBENCH_PROJECT_DIR"] = str(project)
    proc = subprocess.Popen(
        [*WORKBENCH, "server", "start", "--backend-store-uri", "sqlite:///team.db", "--port", str(port)],
        env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state_file = project / ".workbench" / "server.json"
    deadline = time.monotonic() + 120
    while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state_file.exists() and proc.poll() is None, proc.communicate()
    pid = json.loads(state_file.read_text())["pid"]
    group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    if sig == "SIGTERM":
        assert proc.returncode == 1 and "interrupted" in err, err
        assert not state_file.exists(), "the record of a stopped server is cleared"
    else:
        status = _cli(project, "server", "status")
        assert f"pid {pid}" in status.stdout, status.stdout
        assert _cli(project, "server", "stop").returncode == 0
    _, alive = psutil.wait_procs(group, timeout=30)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert port_free("127.0.0.1", port)
