"""Load and fault tests against the team server: `workbench batch --jobs 4` and
`workbench search-worker` processes at once, and a server restart in the middle of a batch
after which every job must still end FINISHED with all its points.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKBENCH = [sys.executable, "-m", "workbench.cli"]
KERNELSPEC = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}


def _notebook(path: Path) -> Path:
    """A small notebook that resumes the runner's run and logs steps, ticks and two metrics.

    ``tick_s`` > 0 makes it log one point every ``tick_s`` seconds (the fault test stops the
    server meanwhile)."""
    nb = nbformat.v4.new_notebook(metadata=KERNELSPEC)
    params = nbformat.v4.new_code_cell(
        'experiment_name: str = "team-load"  # experiment\n'
        "seed: int = 0  # distinguishes the jobs\n"
        "n_steps: int = 300  # step-metric points\n"
        "ticks: int = 0  # points logged one by one\n"
        "tick_s: float = 0.0  # pause between ticks"
    )
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import time\n"
        "import mlflow\n"
        "from workbench.tracking.runs import StepLogger, start_run\n\n"
        'run = start_run(experiment_name, algorithm="load", params={"seed": seed, "n_steps": n_steps})\n'
        "with StepLogger() as steps:\n"
        "    for s in range(n_steps):\n"
        "        steps.log(s, loss=1 / (s + 1), acc=s / n_steps)\n"
        "for t in range(ticks):\n"
        '    mlflow.log_metric("tick", t, step=t)\n'
        "    time.sleep(tick_s)\n"
        'mlflow.log_metrics({"final_loss": 1 / n_steps, "seed_value": float(seed)})\n'
        "run.end()"
    )
    nb.cells = [nbformat.v4.new_markdown_cell("# Team load fixture"), params, body]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _batch_file(project: Path, experiment: str, seeds: list[int], **parameters) -> Path:
    import yaml

    _notebook(project / "notebooks" / "load.ipynb")
    doc = {
        "notebook": "notebooks/load.ipynb",
        "experiment": experiment,
        "parameters": parameters,
        "grid": {"seed": seeds},
    }
    path = project / f"{experiment}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env(project: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "WORKBENCH_PROJECT_DIR": str(project),
        "MLFLOW_TRACKING_URI": url,
        "PYTHONUNBUFFERED": "1",
    }


def test_batch_and_search_workers_at_once(team_server, use_server, tmp_path):
    from workbench import search, tracking

    url = use_server(team_server.url)
    project = tmp_path / "project"
    project.mkdir()
    tag = uuid.uuid4().hex[:6]
    batch_exp = f"team-load-batch-{tag}"
    batch = _batch_file(project, batch_exp, list(range(8)), n_steps=300)

    # the study: a parent run on the server, trials in an RDB storage on the same PostgreSQL
    storage = team_server.pg.create_database(f"wb_optuna_{tag}")
    search_exp = f"team-load-search-{tag}"
    parent = tracking.start_run(search_exp, algorithm="logreg-search")
    study = search.create_study(
        "logistic_regression",
        n_rows=600,
        cv=2,
        storage=storage,
        study_name=f"load-{tag}",
        n_trials=6,
        pruner="none",
    )

    env = _env(project, url)
    procs = [
        subprocess.Popen(
            [*WORKBENCH, "batch", str(batch), "--jobs", "4"],
            env=env,
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    ]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [*WORKBENCH, "search-worker", "--study", study.name, "--storage", storage, "--trials", "3"],
                env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )  # fmt: skip
    try:
        outputs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    parent.end()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"{p.args[3]} exited {p.returncode}:\n{out[-4000:]}"

    client = mlflow.MlflowClient()
    exp_id = client.get_experiment_by_name(batch_exp).experiment_id
    runs = client.search_runs([exp_id], max_results=100)
    assert len(runs) == 8, "every batch run landed in its experiment"
    assert sorted(int(r.data.params["seed"]) for r in runs) == list(range(8))
    for r in runs:
        assert r.info.status == "FINISHED", (
            r.info.run_id,
            r.data.tags.get("workbench.status_reason"),
        )
        assert r.data.metrics["seed_value"] == float(r.data.params["seed"])
        assert {"loss", "accuracy", "final_loss"} <= set(r.data.metrics)
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 300

    trials = study.study.get_trials(deepcopy=False)
    assert len(trials) >= 6 and all(t.state.name == "COMPLETE" for t in trials), [
        t.state.name for t in trials
    ]
    children = search.child_runs(parent.run_id, client=client)
    assert len(children) == len(trials)
    assert all(c.info.experiment_id == parent.experiment_id for c in children), (
        "trials stay in the study's experiment"
    )
    assert all(c.info.status == "FINISHED" and c.data.metrics for c in children)
    running = client.search_runs([exp_id, parent.experiment_id], "attributes.status = 'RUNNING'")
    assert running == []


def test_server_restart_in_the_middle_of_a_batch(team_server, use_server, tmp_path):
    """Stop the server while two jobs log, start it again: every job ends FINISHED with all
    its points (the MLflow client retries through the restart), and the batch exits 0."""
    url = use_server(team_server.url)
    project = tmp_path / "project"
    project.mkdir()
    experiment = f"team-fault-{uuid.uuid4().hex[:6]}"
    ticks, jobs = 20, 2
    batch = _batch_file(project, experiment, list(range(jobs)), n_steps=50, ticks=ticks, tick_s=0.5)
    proc = subprocess.Popen(
        [*WORKBENCH, "batch", str(batch), "--jobs", str(jobs)], env=_env(project, url), cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        client = mlflow.MlflowClient()
        deadline = time.monotonic() + 240
        while True:  # wait until the jobs are logging ticks
            exp = client.get_experiment_by_name(experiment)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and any("tick" in r.data.metrics for r in runs):
                break
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the batch never started logging"
            time.sleep(1)
        stop = team_server.cli("server", "stop")
        assert stop.returncode == 0, stop.stderr
        time.sleep(3)
        start = team_server.cli(
            "server", "start", "--backend-store-uri", team_server.store_url, "--port", str(team_server.port),
            "--artifacts-destination", str(team_server.project / "team-artifacts"), env={"WORKBENCH_SERVER_WORKERS": "2"},
        )  # fmt: skip
        assert start.returncode == 0, start.stderr
        out = proc.communicate(timeout=400)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], max_results=100
    )
    statuses = {
        r.info.run_id: (r.info.status, r.data.tags.get("workbench.status_reason")) for r in runs
    }
    assert proc.returncode == 0, f"batch exited {proc.returncode}; runs {statuses}\n{out[-4000:]}"
    assert len(runs) == jobs, statuses
    assert all(status == "FINISHED" for status, _ in statuses.values()), statuses
    for r in runs:  # nothing lost in a run that says it finished
        assert len(client.get_metric_history(r.info.run_id, "tick")) == ticks, r.info.run_id
        assert "final_loss" in r.data.metrics
