"""The run is created while the kernel starts and handed over before the first cell.

Real kernels, a real store: the kernel sees the run's variables in its first cell, a run
that cannot be created leaves no kernel, run or report behind, and a runner killed mid-run
has its run marked KILLED by the store agent it forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import mlflow
import nbformat
import psutil
import pytest
from runner_helpers import NOTEBOOKS, WORKBENCH, runs_of

from workbench import cli
from workbench.core import names, store

pytestmark = pytest.mark.slow


def _kernels_of(proc: psutil.Process) -> list[psutil.Process]:
    out = []
    for child in proc.children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _deleted_experiment(name: str) -> str:
    client = store.connect()
    exp_id = store.experiment_id(name)
    client.delete_experiment(exp_id)
    return exp_id


def test_first_cell_already_runs_inside_the_runners_run(project, run_cli, experiment_name):
    res = run_cli("run", str(NOTEBOOKS / "firstcell.ipynb"), "--experiment", experiment_name)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == "FINISHED" and run.data.metrics["first_cell"] == 1.0
    report = project / run.data.tags[names.TAG_REPORT]
    cells = nbformat.read(report, as_version=4).cells
    assert len(cells) == 3  # header + the notebook's own two cells: the hand-over is no cell
    code = cells[2]
    assert code.execution_count == 1  # the silent hand-over took no execution count
    assert f"logged into {run.info.run_id}" in str(code.outputs)


@pytest.mark.parametrize("where", ["in-process", "agent"])
def test_a_run_that_cannot_be_created_leaves_nothing(
    project, run_cli, experiment_name, where, capsys
):
    exp_id = _deleted_experiment(experiment_name)
    args = ["run", str(NOTEBOOKS / "plain.ipynb"), "--experiment", experiment_name]
    if where == "in-process":  # MLflow is loaded here: the run is created on a thread
        before = {p.pid for p in _kernels_of(psutil.Process())}  # e.g. an earlier test's template
        assert cli.main(args) == 1, "the store's error ends the command with exit 1"
        assert "is deleted" in capsys.readouterr().err
        left = [p for p in _kernels_of(psutil.Process()) if p.pid not in before]
        assert left == [], "the kernel started for the run is shut down"
    else:  # a fresh command: a forked agent creates the run
        res = run_cli(*args)
        assert res.returncode != 0 and "is deleted" in res.stderr, res.stdout + res.stderr
    assert mlflow.MlflowClient().search_runs([exp_id]) == []
    assert not (project / "runs_reports" / experiment_name).exists()


def test_a_killed_runner_has_its_run_marked_killed_by_its_agent(project, experiment_name):
    mlflow.MlflowClient().search_experiments()  # the store exists before the command and we poll it
    cmd = [*WORKBENCH, "run", str(NOTEBOOKS / "sleeps.ipynb"), "--experiment", experiment_name]
    proc = subprocess.Popen(
        cmd, cwd=project, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    runner_proc = psutil.Process(proc.pid)
    kernels: list[psutil.Process] = []
    agents: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for the notebook to resume the run
            runs = runs_of(experiment_name)
            if runs and runs[0].data.tags.get("workbench.algorithm") == "fixture":
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.5)
        kernels = _kernels_of(runner_proc)
        agents = [c for c in runner_proc.children() if c not in kernels]
        assert kernels and len(agents) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        agents[0].wait(timeout=120)  # it sees the runner gone, ends the run and exits
        (run,) = runs_of(experiment_name)
        assert run.info.status == "KILLED"
        assert f"runner process {proc.pid} died" in run.data.tags[names.TAG_REASON]
    finally:
        for p in [proc, *kernels, *agents]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()
        proc.wait()
        psutil.wait_procs([*kernels, *agents], timeout=30)
        if proc.stderr:
            proc.stderr.close()
