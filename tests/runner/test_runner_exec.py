"""The runner with real kernels on a fresh embedded store: statuses, reports, batches."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nbformat
import pytest
from runner_helpers import NOTEBOOKS, runs_of

from workbench import cli
from workbench.core import names

pytestmark = pytest.mark.slow


def _report_files(run) -> tuple[Path, Path]:
    from workbench.core.config import get_settings

    project = get_settings().project_dir
    ipynb = project / run.data.tags[names.TAG_REPORT]
    html = project / run.data.tags[names.TAG_REPORT_HTML]
    return ipynb, html


def _artifacts(run_id: str) -> set[str]:
    client = mlflow.MlflowClient()
    return {Path(a.path).suffix for a in client.list_artifacts(run_id, "report")}


def test_run_logs_into_the_runners_run_and_reports(project, experiment_name, capsys):
    args = ["-p", "lr", "0.2", "-p", "depth", "4", "--experiment", experiment_name]
    code = cli.main(["run", str(NOTEBOOKS / "tracked.ipynb"), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = runs_of(experiment_name)  # the notebook resumed the runner's run, no second run
    assert run.info.status == "FINISHED"
    assert run.data.metrics["score"] == pytest.approx(0.8) and "loss" in run.data.metrics
    assert run.data.params["lr"] == "0.2"
    tags = run.data.tags
    assert tags["mlflow.source.name"] == str(NOTEBOOKS / "tracked.ipynb")
    assert json.loads(tags[names.TAG_PARAMS])["experiment_name"] == experiment_name
    assert tags[names.TAG_LABEL] == "lr=0.2-depth=4"
    ipynb, html = _report_files(run)
    assert ipynb.parent == project / "runs_reports" / experiment_name
    assert ipynb.name.endswith("-tracked-lr=0.2-depth=4.ipynb") and html.exists()
    top = nbformat.read(ipynb, as_version=4).cells[0]
    assert (
        run.info.run_id in top.source
        and "#/experiments/" in top.source
        and "FINISHED" in top.source
    )
    assert run.info.run_id in html.read_text()
    assert _artifacts(run.info.run_id) == {".ipynb", ".html"}
    for needle in (run.info.run_id, "FINISHED", str(html.name)):
        assert needle in out
    assert (project / "runs_reports" / "index.html").exists()


def test_a_notebook_that_never_heard_of_the_workbench(project, capsys):
    assert cli.main(["run", str(NOTEBOOKS / "plain.ipynb"), "--label", "bare"]) == 0
    (run,) = runs_of("plain")  # no --experiment and no experiment_name: the notebook's stem
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_LABEL] == "bare"
    ipynb, html = _report_files(run)
    executed = nbformat.read(ipynb, as_version=4)
    assert any("x is 2" in str(c.get("outputs")) for c in executed.cells)
    assert run.info.run_id in executed.cells[0].source and html.exists()


@pytest.mark.parametrize(
    ("fixture", "args", "status", "why"),
    [
        ("raises", [], "FAILED", "ValueError: boom on purpose"),
        ("sleeps", ["--timeout", "25"], "FAILED", "longer than the timeout of 25 s"),
        ("killself", [], "KILLED", "the kernel died"),
    ],
)
def test_failures_end_truthfully(project, run_cli, experiment_name, fixture, args, status, why):
    res = run_cli(
        "run", str(NOTEBOOKS / f"{fixture}.ipynb"), "--experiment", experiment_name, *args
    )
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == status, run.data.tags
    assert why in run.data.tags[names.TAG_REASON]
    assert run.info.end_time is not None
    assert status in res.stdout and run.info.run_id in res.stdout and why in res.stdout
    ipynb, html = _report_files(run)
    assert ipynb.exists() and html.exists()
    header = nbformat.read(ipynb, as_version=4).cells[0].source
    assert status in header and run.info.run_id in header
    assert _artifacts(run.info.run_id) == {".ipynb", ".html"}
    if fixture == "raises":
        assert run.data.metrics["before_error"] == 1.0  # logged before the error, kept


def test_grid_of_8_jobs_with_4_kernels(project, run_cli, experiment_name):
    batch = project / "grid.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: {experiment_name}\n"
        "parameters: {tag: grid}\ngrid: {lr: [0.1, 0.2], depth: [1, 2, 3, 4]}\nmetric: score\n"
    )
    res = run_cli("batch", str(batch), "--jobs", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    runs = runs_of(experiment_name)
    assert len(runs) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    got = {(r.data.params["lr"], r.data.params["depth"]) for r in runs}
    assert got == {(lr, d) for lr in ("0.1", "0.2") for d in ("1", "2", "3", "4")}
    for r in runs:
        assert {"score", "accuracy", "loss"} <= set(r.data.metrics)
        lr, depth = float(r.data.params["lr"]), int(r.data.params["depth"])
        assert r.data.metrics["score"] == pytest.approx(lr * depth)
        assert len(mlflow.MlflowClient().get_metric_history(r.info.run_id, "loss")) == 5
        assert all(p.exists() for p in _report_files(r))
    assert "8 job(s): 8 ok, 0 failed" in res.stdout and "score=" in res.stdout

    res = run_cli("batch", str(batch), "--jobs", "4", "--resume")
    assert res.returncode == 0 and res.stdout.count("SKIPPED") == 8, res.stdout
    assert len(runs_of(experiment_name)) == 8


def test_runs_the_notebook_left_running_end_with_its_execution(project, run_cli, experiment_name):
    """The kernel dies with a nested run and its child open: they end KILLED with the
    execution's run, not RUNNING for ever."""
    res = run_cli(
        "run", str(NOTEBOOKS / "killself_children.ipynb"), "--experiment", experiment_name
    )
    assert res.returncode == 1, res.stdout + res.stderr
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3, [r.info.run_name for r in runs]
    assert {r.info.status for r in runs} == {"KILLED"}, [
        (r.info.run_id, r.info.status) for r in runs
    ]
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            assert "its notebook execution ended KILLED" in run.data.tags[names.TAG_REASON]
