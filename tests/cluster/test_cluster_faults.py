"""Faults on a real Dask cluster: a worker killed mid-batch, the scheduler killed mid-batch.

A killed worker's job runs again on the other worker; its interrupted run ends KILLED with
the reason, and every parameter set ends with exactly one FINISHED run. A killed scheduler
stops the command with exit 1 and the list of jobs that did not finish; nothing is left
RUNNING, and ``--resume`` completes the rest later.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

from cluster_servers import NOTEBOOKS, write_batch

from workbench.core import names
from workbench.run import cluster_runs


def _runs(experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=500)


def _wait_running(experiment: str, worker: str | None, count: int = 1, timeout: float = 120):
    """Wait until ``count`` runs (of ``worker``, when given) are RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [
            r
            for r in _runs(experiment)
            if r.info.status == "RUNNING"
            and worker in (None, r.data.tags.get(cluster_runs.TAG_WORKER))
        ]
        if len(running) >= count:
            return running
        time.sleep(0.3)
    raise AssertionError(f"no RUNNING run of {worker or 'any worker'} within {timeout} s")


def test_a_worker_killed_mid_job_costs_only_time(project, own_cluster, cli, experiment_name):
    path = write_batch(
        project,
        "sleepy.yaml",
        f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {seconds: [2, 3]}\n",
    )
    proc = cli.start("batch", str(path), "--cluster", own_cluster.address)
    victim = _wait_running(experiment_name, "w1")[0]
    own_cluster.workers[0].send_signal(signal.SIGKILL)  # w1, in the middle of its job
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{out}\n{err}"

    runs = _runs(experiment_name)
    statuses = Counter(r.info.status for r in runs)
    assert statuses["RUNNING"] == 0, statuses
    finished = Counter(r.data.tags[names.TAG_HASH] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 2 and set(finished.values()) == {1}, finished
    killed = {r.info.run_id: r for r in runs if r.info.status == "KILLED"}
    assert victim.info.run_id in killed
    reason = killed[victim.info.run_id].data.tags[names.TAG_REASON]
    assert "w1 was lost mid-job" in reason and "retried on w2" in reason, reason
    assert f"marked run {victim.info.run_id} KILLED" in err
    assert "2 job(s): 2 ok, 0 failed" in out


def test_a_killed_scheduler_fails_clearly_and_leaves_nothing_running(
    project, own_cluster, cli, experiment_name
):
    path = write_batch(
        project,
        "long.yaml",
        f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {seconds: [60, 61]}\n",
    )
    proc = cli.start("batch", str(path), "--cluster", own_cluster.address)
    _wait_running(experiment_name, None, count=2)
    own_cluster.scheduler.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, f"{out}\n{err}"
    assert f"lost the Dask scheduler at {own_cluster.address}; 2 job(s) did not finish" in err
    assert "sleeps-seconds=60" in err and "sleeps-seconds=61" in err
    assert "--resume" in err
    runs = _runs(experiment_name)
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.info, r.data.tags, err) for r in runs]
    assert all("scheduler" in r.data.tags[names.TAG_REASON] for r in runs)
    for proc in own_cluster.workers:  # the workers stop on their own without a scheduler
        proc.wait(timeout=60)
    assert not any(_kernel_of(r) for r in runs)


def _kernel_of(run) -> bool:
    """True when the process that ran ``run`` (its worker) is still alive."""
    pid = int(run.data.tags.get(names.TAG_PID, "0"))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
