"""Problems recording a run's end are said, not swallowed: in the run's reason and on stderr.

Each is made to happen for real: a disk that fills up while papermill writes the executed
notebook (a file size limit on the command, as a full disk would), a run deleted by a
colleague while it ran (its runner then killed, so its agent cannot mark it KILLED), and a
store that refuses writes while the stale-run sweep marks a dead runner's run KILLED.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time

import mlflow
import psutil
import pytest
from runner_helpers import NOTEBOOKS, WORKBENCH, runs_of

from workbench.core import names
from workbench.run import commands

pytestmark = pytest.mark.slow

FILE_LIMIT = 8 * 1024 * 1024  # bytes any file written may reach; the store stays far below


def _full_disk() -> None:
    """In the command's process: files stop growing past FILE_LIMIT (EFBIG, as ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed, not told
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_an_executed_notebook_cut_short_is_said(project, experiment_name):
    mlflow.MlflowClient().search_experiments()  # the store, created without the limit
    res = subprocess.run(
        [*WORKBENCH, "run", str(NOTEBOOKS / "bigoutput.ipynb"), "-p", "megabytes", "24",
         "--experiment", experiment_name],
        cwd=project, env=dict(os.environ), capture_output=True, text=True, timeout=600,
        preexec_fn=_full_disk,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    why = run.data.tags[names.TAG_REASON]
    assert "File too large" in why, why  # papermill's own write failed
    assert "report incomplete: the executed notebook could not be read" in why, why
    assert f"run {run.info.run_id}: report incomplete" in res.stderr, res.stderr


def test_a_run_that_cannot_be_marked_killed_is_said(project, experiment_name):
    client = mlflow.MlflowClient()
    client.search_experiments()
    cmd = [*WORKBENCH, "run", str(NOTEBOOKS / "sleeps.ipynb"), "--experiment", experiment_name]
    proc = subprocess.Popen(
        cmd, cwd=project, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    runner = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = runs_of(experiment_name)
            if runs and runs[0].data.tags.get("workbench.algorithm") == "fixture":
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.5)
        (run,) = runs_of(experiment_name)
        agent = [c for c in runner.children() if "ipykernel" not in " ".join(c.cmdline())]
        client.delete_run(run.info.run_id)  # a colleague cleans the experiment up meanwhile
        proc.kill()
        proc.wait()
        agent[0].wait(timeout=120)  # it tries to mark the run KILLED, and says it could not
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert f"could not mark run {run.info.run_id} KILLED" in err, err
    assert "must be in the 'active' state" in err, err


def test_runs_the_sweep_could_not_mark_are_said(project, tracking_uri, capsys):
    client = mlflow.MlflowClient()
    exp_id = client.create_experiment("stale")
    dead = subprocess.Popen(["true"])
    dead.wait()
    tags = {names.TAG_HOST: socket.gethostname(), names.TAG_PID: str(dead.pid)}
    stale = client.create_run(exp_id, tags=tags).info.run_id  # its runner is gone
    path = tracking_uri.removeprefix("sqlite:///")
    read_only = mlflow.MlflowClient(f"sqlite:///file:{path}?mode=ro&uri=true")
    commands._sweep(read_only, "its runner process is gone")  # a store that refuses writes
    err = capsys.readouterr().err
    assert f"could not mark run {stale} KILLED" in err and "readonly" in err, err
    assert client.get_run(stale).info.status == "RUNNING"
