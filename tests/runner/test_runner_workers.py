"""A batch worker that dies costs its own job, not every job in flight.

A real ``workbench batch --jobs 2`` runs three sleeping jobs; while two of them sleep, one
worker process is killed outright (as the OOM killer would). Its job ends KILLED with
"worker process died" and its kernel dies with it (the workers share one kernel template,
which kills the kernels of a worker whose channel closed); the other job keeps its kernel and
its result, the third runs on a fresh worker, and each parameter set ran exactly once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections import Counter

import psutil
import pytest
from runner_helpers import NOTEBOOKS, WORKBENCH, runs_of

from workbench.core import names

pytestmark = pytest.mark.slow


def _kernels(proc: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "ipykernel" in " ".join(child.cmdline()):
                found.append(child)
    return found


def _first_gone(kernels: list[psutil.Process]) -> tuple[list, list]:
    """Wait (up to 20 s) until a kernel is gone: (the gone, the still alive)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gone = [k for k in kernels if not k.is_running() or k.status() == psutil.STATUS_ZOMBIE]
        if gone:
            return gone, [k for k in kernels if k not in gone]
        time.sleep(0.05)
    return [], kernels


def _wait_sleeping(proc: subprocess.Popen, experiment: str, n: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = [r for r in runs_of(experiment) if r.info.status == "RUNNING"]
        if sum(r.data.tags.get("workbench.algorithm") == "fixture" for r in running) >= n:
            return
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.5)
    pytest.fail(f"{n} jobs never started sleeping")


def test_a_dead_worker_costs_its_own_job_only(project, experiment_name):
    import mlflow

    mlflow.MlflowClient().search_experiments()  # the store exists before anyone polls it
    batch = project / "three.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {seconds: [25, 26, 27]}\n"
    )
    proc = subprocess.Popen(
        [*WORKBENCH, "batch", str(batch), "--jobs", "2"],
        cwd=project, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        _wait_sleeping(proc, experiment_name, 2)
        root = psutil.Process(proc.pid)
        templates = [p for p in root.children() if "workbench.run.template" in p.cmdline()]
        workers = [p for p in root.children() if p not in templates]
        assert len(templates) == 1 and len(workers) == 2, [p.cmdline() for p in root.children()]
        kernels = _kernels(templates[0])
        assert len(kernels) == 2
        victim = workers[0]
        victim.kill()
        gone, alive = _first_gone(kernels)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(gone) == 1 and len(alive) == 1, "the dead worker's kernel outlived it"
    assert proc.returncode == 1, out

    runs = runs_of(experiment_name)
    per_set = Counter(r.data.tags[names.TAG_HASH] for r in runs)
    assert len(per_set) == 3 and set(per_set.values()) == {1}, per_set  # each set ran once
    statuses = Counter(r.info.status for r in runs)
    assert statuses == {"FINISHED": 2, "KILLED": 1}, statuses
    (killed,) = [r for r in runs if r.info.status == "KILLED"]
    why = killed.data.tags[names.TAG_REASON]
    assert f"worker process died (pid {victim.pid}, killed by SIGKILL)" in why, why
    assert "3 job(s): 2 ok, 1 failed" in out and "worker process died" in out, out
