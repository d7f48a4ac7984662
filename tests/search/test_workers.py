"""Several processes on one study: `workbench search-worker` processes sharing a journal file or
an RDB storage, all trials children of one parent run, and a worker killed mid-trial."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from workbench import search, tracking

pytestmark = pytest.mark.slow
SLOW_TRIAL = {"n_estimators": 20000}  # minutes of boosting: the worker is killed long before
FAST_TRIAL = {"n_estimators": 5}


def _logs(tmp_path: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker-*.log"))
    )


def _wait_running_child(
    parent_run_id: str, proc: subprocess.Popen, tmp_path: Path, limit: float = 180
):
    """The child run the worker opened when its trial started (polls; fails if it died)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        running = search.child_runs(parent_run_id, status="RUNNING")
        if running:
            return running[0]
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{_logs(tmp_path)}"
        time.sleep(0.3)
    pytest.fail(f"no trial started within {limit}s:\n{_logs(tmp_path)}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_two_journal_workers_share_one_study_under_one_parent(
    tracking_uri, experiment_name, tmp_path
):
    run = tracking.start_run(experiment_name, algorithm="logreg-search")
    storage = f"journal:{tmp_path / 'study.log'}"
    s = search.create_study(
        "logistic_regression", storage=storage, n_rows=800, pruner="none", n_trials=6, seed=1
    )
    procs = search.start_workers(s.name, storage, 2, n_trials=3, log_dir=tmp_path)
    try:
        codes = search.wait_workers(procs, timeout=300)
    finally:
        for p in procs:
            _kill(p)
    assert codes == [0, 0], _logs(tmp_path)

    trials = s.study.get_trials()  # this process reads the same journal
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs[search.WORKER_ATTR] for t in trials}
    assert {int(w.split(":")[1]) for w in workers} == {p.pid for p in procs}
    children = search.child_runs(run.run_id)
    assert sorted(c.info.run_name for c in children) == [f"trial-{i}" for i in range(6)]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {run.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {t.user_attrs[search.RUN_ATTR] for t in trials} == {c.info.run_id for c in children}

    result = s.finish(log_model=False, plots=False)
    run.end()
    assert result.counts["complete"] == 6
    assert mlflow.get_run(run.run_id).data.params["search_storage"] == "journal"


def test_worker_refuses_an_unknown_study(tracking_uri, tmp_path):
    cli = Path(sys.executable).with_name("workbench")
    out = subprocess.run(
        [
            str(cli),
            "search-worker",
            "--study",
            "nope",
            "--storage",
            f"journal:{tmp_path / 'j.log'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "no study 'nope'" in out.stderr


def _killed_worker_scenario(storage: str, experiment_name: str, tmp_path: Path):
    run = tracking.start_run(experiment_name, algorithm="gbm-search")
    space = {"n_estimators": ["int", 5, 20000], "max_depth": 2}
    s = search.create_study(
        "gradient_boosting",
        space=space,
        storage=storage,
        n_rows=800,
        pruner="none",
        seed=0,
        start_from_defaults=False,
    )
    s.study.enqueue_trial(SLOW_TRIAL)
    s.study.enqueue_trial(FAST_TRIAL)
    [proc] = search.start_workers(s.name, storage, 1, n_trials=1, log_dir=tmp_path)
    try:
        child = _wait_running_child(run.run_id, proc, tmp_path)
        assert child.info.run_name == "trial-0"
    finally:
        _kill(proc)
    return run, s, child


def _assert_closed_and_study_goes_on(run, s, child, reason: str) -> None:
    s.optimize(n_trials=1)  # the study goes on here; it also sweeps lost trials
    states = [t.state.name for t in s.study.get_trials()]
    assert states == ["FAIL", "COMPLETE"], states
    lost = mlflow.get_run(child.info.run_id)
    assert lost.info.status == "FAILED"
    assert lost.data.tags[search.STATE_TAG] == "failed"
    assert reason in lost.data.tags["workbench.trial.error"]
    assert search.child_runs(run.run_id, status="RUNNING") == []
    run.end()


def test_killed_journal_worker_fails_its_trial_and_closes_its_run(
    tracking_uri, experiment_name, tmp_path
):
    run, s, child = _killed_worker_scenario(
        f"journal:{tmp_path / 'study.log'}", experiment_name, tmp_path
    )
    _assert_closed_and_study_goes_on(run, s, child, "died mid-trial")


def test_killed_rdb_worker_is_failed_by_its_heartbeat(
    tracking_uri, experiment_name, tmp_path, monkeypatch
):
    monkeypatch.setenv(search.HEARTBEAT_ENV, "1")  # grace period 2 s; workers inherit it
    run, s, child = _killed_worker_scenario(
        f"sqlite:///{tmp_path / 'optuna.db'}", experiment_name, tmp_path
    )
    deadline = time.monotonic() + 60
    while s.study.get_trials()[0].state.name == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        search.reconcile(s.study)  # what every worker does when it starts and stops
    _assert_closed_and_study_goes_on(run, s, child, "heartbeat")
