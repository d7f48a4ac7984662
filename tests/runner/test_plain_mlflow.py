"""A notebook that uses plain MLflow logs into the runner's run (``tracking.handover``).

Real ``workbench run`` subprocesses, real kernels, a fresh store per test. The runner hands
its run over as ``$MLFLOW_RUN_ID`` (MLflow Projects' convention): the first top-level
``mlflow.start_run()`` resumes it, nested runs are its children, later top-level runs become
its children too, and the runner's verdict is the final status. Every run of the
execution links to the report.
"""

from __future__ import annotations

import os

import mlflow
import nbformat
import pytest
from runner_helpers import NOTEBOOKS

from workbench.core import names

pytestmark = pytest.mark.slow

PARENT = "mlflow.parentRunId"


def _all_runs() -> list:
    """Every run in the test's store, whatever its experiment."""
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


def _split(runs: list) -> tuple:
    """(the execution's run, the other runs) — the execution's run carries the runner tag."""
    (execution,) = [r for r in runs if r.data.tags.get(names.TAG_RUNNER) == "papermill"]
    return execution, [r for r in runs if r.info.run_id != execution.info.run_id]


def _report_text(run, project) -> str:
    return str(nbformat.read(project / run.data.tags[names.TAG_REPORT], as_version=4).cells)


def _assert_linked(child, execution) -> None:
    """A run the notebook made: in the execution's experiment, linked to its report."""
    for tag in (names.TAG_REPORT, names.TAG_REPORT_HTML, "mlflow.source.name"):
        assert child.data.tags[tag] == execution.data.tags[tag], tag
    assert names.TAG_RUNNER not in child.data.tags  # not an execution of its own
    assert child.info.experiment_id == execution.info.experiment_id


def test_the_articles_pattern_makes_one_run_with_everything(project, run_cli):
    """``with mlflow.start_run(): log_param(...)`` resumes the runner's run: params, metrics,
    report and link on one run, and no second run."""
    nb = str(NOTEBOOKS / "plain_mlflow_article.ipynb")
    res = run_cli("run", nb, "--experiment", "churn-article", "-p", "learning_rate", "0.05")
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = _all_runs()
    assert run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "churn-article"
    assert run.data.params == {"learning_rate": "0.05"}
    assert run.data.metrics == {"val_auc": 0.91}
    assert run.info.run_name == "gbm-article"  # the notebook's run_name renames the run
    tags = run.data.tags
    assert tags[names.TAG_RUNNER] == "papermill" and tags[names.TAG_REPORT].endswith(".ipynb")
    report = nbformat.read(project / tags[names.TAG_REPORT], as_version=4)
    assert run.info.run_id in report.cells[0].source and "#/experiments/" in report.cells[0].source
    assert f"logged into {run.info.run_id}" in str(report.cells)
    assert "workbench:" not in str(report.cells)  # the notebook's experiment was the runner's
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert {p.rsplit(".", 1)[-1] for p in arts} == {"ipynb", "html"}
    assert run.info.run_id in res.stdout


def test_a_notebook_that_picks_another_experiment_still_makes_one_run(project, run_cli):
    """MLflow refuses to resume a run from another experiment; the runner's run stays the
    run (in the experiment ``workbench run`` chose) and the report says how to choose."""
    res = run_cli("run", str(NOTEBOOKS / "plain_mlflow_article.ipynb"))
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = _all_runs()
    assert mlflow.get_experiment(run.info.experiment_id).name == "plain_mlflow_article"
    assert run.info.status == "FINISHED" and run.data.params == {"learning_rate": "0.1"}
    text = _report_text(run, project)
    assert "--experiment 'churn-article'" in text and f"logged into {run.info.run_id}" in text


def test_a_cell_failing_inside_with_start_run_fails_the_one_run(project, run_cli):
    res = run_cli("run", str(NOTEBOOKS / "plain_mlflow_fails.ipynb"))
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = _all_runs()
    assert run.info.status == "FAILED"
    assert run.data.params == {"alpha": "1"}
    assert "ValueError: boom inside the run" in run.data.tags[names.TAG_REASON]
    assert names.TAG_REPORT in run.data.tags and "FAILED" in res.stdout


def test_a_loop_of_top_level_runs_makes_children_of_the_execution(project, run_cli):
    """The first iteration resumes the execution's run; the later ones, and a metric logged
    with no active run afterwards, become its children: nothing orphaned, no clash."""
    res = run_cli("run", str(NOTEBOOKS / "plain_mlflow_loop.ipynb"))
    assert res.returncode == 0, res.stdout + res.stderr
    execution, children = _split(_all_runs())
    assert execution.info.status == "FINISHED"
    assert execution.data.params == {"lr": "0.01"} and execution.info.run_name == "lr-0.01"
    assert len(children) == 3
    by_name = {c.info.run_name: c for c in children if c.info.run_name.startswith("lr-")}
    assert {n: c.data.params for n, c in by_name.items()} == {
        "lr-0.1": {"lr": "0.1"},
        "lr-0.3": {"lr": "0.3"},
    }
    (implicit,) = [c for c in children if "after_loop" in c.data.metrics]
    for child in children:
        assert child.data.tags[PARENT] == execution.info.run_id
        assert child.info.status == "FINISHED"
        _assert_linked(child, execution)
    assert implicit.data.params == {}


def test_nested_runs_are_children_of_the_execution(project, run_cli):
    res = run_cli("run", str(NOTEBOOKS / "plain_mlflow_nested.ipynb"))
    assert res.returncode == 0, res.stdout + res.stderr
    execution, children = _split(_all_runs())
    assert execution.data.params == {"model": "gbm"}
    assert execution.data.metrics == {"mean_auc": 0.81}
    assert sorted(c.info.run_name for c in children) == ["fold-0", "fold-1", "fold-2"]
    for child in children:
        assert child.data.tags[PARENT] == execution.info.run_id
        assert set(child.data.metrics) == {"auc"}
        _assert_linked(child, execution)


def test_workbench_start_run_still_resumes_and_plain_nested_runs_join_it(
    project, run_cli, experiment_name
):
    nb = str(NOTEBOOKS / "helper_then_plain.ipynb")
    res = run_cli("run", nb, "--experiment", experiment_name)
    assert res.returncode == 0, res.stdout + res.stderr
    execution, (child,) = _split(_all_runs())
    assert execution.info.run_name.startswith("fixture-")  # the helper's naming convention
    assert execution.data.params == {"lr": "0.1"} and execution.data.metrics == {"score": 1.0}
    assert child.info.run_name == "fold-0" and child.data.tags[PARENT] == execution.info.run_id
    _assert_linked(child, execution)


@pytest.mark.parametrize("fail", [False, True], ids=["finishes", "cell-raises"])
def test_the_helper_after_a_run_by_hand_makes_its_own_child_run(
    project, run_cli, experiment_name, fail
):
    """A run by hand took the execution's run and ended; ``tracking.start_run`` then starts a
    child the notebook owns (instead of reopening the by-hand run and mixing both into one),
    and ends it itself: FINISHED, or FAILED when a cell raises. Nothing is left RUNNING."""
    nb = str(NOTEBOOKS / "plain_then_helper.ipynb")
    res = run_cli("run", nb, "--experiment", experiment_name, "-p", "fail", str(fail))
    assert res.returncode == int(fail), res.stdout + res.stderr
    execution, (child,) = _split(_all_runs())
    assert execution.info.run_name == "by-hand"
    assert execution.data.params == {"approach": "by-hand"}
    assert execution.data.metrics == {"by_hand_score": 0.5}
    assert child.info.run_name.startswith("helper-") and child.data.params == {"lr": "0.1"}
    assert child.data.metrics == {"score": 1.0}
    assert child.data.tags[PARENT] == execution.info.run_id
    _assert_linked(child, execution)
    status = "FAILED" if fail else "FINISHED"
    assert (execution.info.status, child.info.status) == (status, status)


def test_mlflow_imported_before_the_hand_over_is_wrapped_at_once(tracking_uri, experiment_name):
    """A kernel forked from a template has imported MLflow already: ``install`` wraps
    ``start_run`` on the spot instead of waiting for an import."""
    import subprocess
    import sys

    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(experiment_name)
    run_id = client.create_run(exp_id, tags={names.TAG_REPORT: "r.ipynb"}).info.run_id
    code = (
        "import mlflow\n"
        "from workbench.tracking import handover\n"
        "assert handover.install()\n"
        "for i in range(2):\n"
        "    with mlflow.start_run():\n"
        "        mlflow.log_param('i', i)\n"
    )
    env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": exp_id}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    runs = {r.info.run_id: r for r in client.search_runs([exp_id])}
    assert runs.pop(run_id).data.params == {"i": "0"}
    (child,) = runs.values()
    assert child.data.params == {"i": "1"} and child.data.tags[PARENT] == run_id
    assert child.data.tags[names.TAG_REPORT] == "r.ipynb"


def test_a_parallel_batch_of_plain_mlflow_notebooks_makes_one_run_per_job(project, run_cli):
    """Batch workers fork kernels from a template that imported MLflow before the hand-over;
    each job's notebook still logs into its own execution's run."""
    batch = project / "article.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'plain_mlflow_article.ipynb'}\nexperiment: churn-article\n"
        "grid: {learning_rate: [0.01, 0.02]}\n"
    )
    res = run_cli("batch", str(batch), "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    runs = _all_runs()
    assert sorted(r.data.params["learning_rate"] for r in runs) == ["0.01", "0.02"]
    for run in runs:
        assert run.data.tags[names.TAG_RUNNER] == "papermill" and PARENT not in run.data.tags
        assert run.info.status == "FINISHED" and run.data.metrics == {"val_auc": 0.91}
