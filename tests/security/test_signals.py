"""Signals end runs truthfully, and servers die with the command that started them.

As an unlucky user would: a terminal closed (SIGHUP), a CI job cancelled (SIGTERM to the
whole process group), a ``kill`` (SIGTERM to the command). A real ``workbench run`` or
``workbench batch --jobs 2`` executes notebooks that sleep; once its runs are RUNNING in the
store the signal comes. Every run must end KILLED with the signal as its reason within a
bounded time, no kernel the command started may survive, and the command exits 128 + N.
A ``workbench serve`` started by ``serve.start_server`` must die with the process that
started it: on Ctrl-C, SIGTERM, and when that process is killed outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import mlflow
import psutil
import pytest

from workbench.core import names

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "runner" / "notebooks"
WORKBENCH = str(Path(sys.executable).parent / "workbench")
ENDED_WITHIN_S = 120  # from the signal to the command's exit, runs ended, kernels gone


@pytest.fixture
def project(tmp_path, tracking_uri, monkeypatch) -> Path:
    """A project folder with its store created (the command and this test's polling must
    not both create its tables at once)."""
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    mlflow.MlflowClient().search_experiments()
    return tmp_path


def _start(project: Path, *args: str, session: bool = False) -> subprocess.Popen:
    """``workbench ARGS`` with its stdout and stderr in a file (read by ``_output``)."""
    path = project / f"out-{uuid.uuid4().hex[:6]}.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [WORKBENCH, *args],
            cwd=project,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def _runs(experiment: str) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _wait_sleeping(proc: subprocess.Popen, experiment: str, n: int) -> None:
    """Until ``n`` runs are RUNNING with their notebook past its first cell (it sleeps)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = [r for r in _runs(experiment) if r.info.status == "RUNNING"]
        if len([r for r in runs if r.data.tags.get("workbench.algorithm") == "fixture"]) >= n:
            return
        assert proc.poll() is None, _output(proc)
        time.sleep(0.5)
    pytest.fail(f"{n} run(s) never started sleeping:\n{_output(proc)}")


def _kernels(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "ipykernel" in " ".join(p.cmdline()):
                found.append(p)
    return found


def _signal_and_check(proc, experiment: str, sig: int, group: bool, runs: int) -> list:
    """Send ``sig``; the command must exit 128 + sig with every run ended and every
    process it started (kernels, agent, workers) gone. Returns the runs."""
    root = psutil.Process(proc.pid)
    started = root.children(recursive=True)  # agent, workers, kernels (and their templates)
    assert len(_kernels(root)) >= runs, [p.cmdline() for p in started]
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=ENDED_WITHIN_S)
    finally:
        _, alive = psutil.wait_procs(started, timeout=30)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    assert alive == [], f"still running: {[p.cmdline() for p in alive]}"
    assert code == 128 + sig, _output(proc)
    assert time.monotonic() - t0 < ENDED_WITHIN_S
    ended = _runs(experiment)
    for run in ended:
        assert run.info.status == "KILLED", (run.info.status, run.data.tags)
        why = run.data.tags[names.TAG_REASON]
        assert f"terminated by {signal.Signals(sig).name}" in why, why
        assert run.info.end_time is not None
    assert f"terminated by {signal.Signals(sig).name}" in _output(proc)
    return ended


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGTERM, True)],
    ids=["SIGTERM-process", "SIGHUP-process", "SIGTERM-group"],
)
def test_a_signalled_run_ends_killed_and_stops_its_kernel(project, experiment_name, sig, group):
    proc = _start(
        project, "run", str(NOTEBOOKS / "sleeps.ipynb"), "--experiment", experiment_name,
        session=group,
    )  # fmt: skip
    try:
        _wait_sleeping(proc, experiment_name, 1)
        (run,) = _signal_and_check(proc, experiment_name, sig, group, runs=1)
        assert "KILLED" in _output(proc) and run.info.run_id in _output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("group", [True, False], ids=["SIGTERM-group", "SIGTERM-process"])
def test_a_signalled_batch_ends_every_run_and_starts_no_more(project, experiment_name, group):
    batch = project / "sleepy.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {seconds: [300, 301, 302]}\n"
    )
    proc = _start(project, "batch", str(batch), "--jobs", "2", session=True)
    try:
        _wait_sleeping(proc, experiment_name, 2)
        runs = _signal_and_check(proc, experiment_name, signal.SIGTERM, group, runs=2)
        assert len(runs) == 2  # the third job never started: no run for it
        out = _output(proc)
        assert "not started: terminated by SIGTERM" in out, out
        assert "3 job(s): 0 ok, 3 failed" in out, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_batch_killed_outright_takes_its_workers_and_kernels_along(project, experiment_name):
    """SIGKILL to the batch command: nobody can forward anything, yet its workers (and their
    templates and kernels) end, and the runs they held end KILLED, not RUNNING for ever."""
    batch = project / "sleepy.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'sleeps.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {seconds: [300, 301]}\n"
    )
    proc = _start(project, "batch", str(batch), "--jobs", "2", session=True)
    try:
        _wait_sleeping(proc, experiment_name, 2)
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        _, alive = psutil.wait_procs(started, timeout=ENDED_WITHIN_S)
        assert alive == [], f"outlived their batch: {[p.cmdline() for p in alive]}"
        runs = _runs(experiment_name)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}, [
            (r.info.status, r.data.tags.get(names.TAG_REASON)) for r in runs
        ]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ serve


DRIVER = textwrap.dedent(
    """
    import sys, time
    from workbench import serve
    server = serve.start_server(sys.argv[1], refresh_interval=3600)
    print("SERVER", server.proc.pid, server.url, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory) -> tuple[str, str]:
    """A registered model in a store of its own: (tracking URI, model URI)."""
    from sklearn.linear_model import LogisticRegression

    from workbench import registry, tracking
    from workbench.core import store
    from workbench.tracking import data, models

    folder = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(var, uri)
        mp.setenv("WORKBENCH_PROJECT_DIR", str(folder))
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        split = data.load_dataset("churn", seed=1, n_rows=300).split(seed=1)
        pipe = data.make_pipeline(LogisticRegression(max_iter=200), split.X_train)
        name = f"churn-signals-{uuid.uuid4().hex[:6]}"
        with tracking.start_run(f"signals-{uuid.uuid4().hex[:6]}", algorithm="lr"):
            info = models.log_model(pipe.fit(split.X_train, split.y_train), split.X_val)
        registry.register(info, name)
        yield uri, f"models:/{name}/1"
        store.forget(uri)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_served_model_dies_with_the_process_that_started_it(model_uri, tmp_path, sig):
    import requests

    tracking_uri, uri = model_uri
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    env["WORKBENCH_PROJECT_DIR"] = str(tmp_path)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, uri], env=env, stdout=subprocess.PIPE, text=True
    )
    server = None
    try:
        line = driver.stdout.readline()
        assert line.startswith("SERVER"), line
        _, pid, url = line.split()
        server = psutil.Process(int(pid))
        assert requests.get(url + "/ping", timeout=10).status_code == 200
        assert server.environ()["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
        driver.send_signal(sig)
        driver.wait(timeout=60)
        server.wait(timeout=30)  # psutil.TimeoutExpired when it outlived its starter
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/ping", timeout=5)
    finally:
        for p in (driver, server):
            with contextlib.suppress(Exception):
                p.kill()
        driver.wait()
