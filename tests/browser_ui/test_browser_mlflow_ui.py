"""The MLflow UI served by `workbench ui`, seen in a real browser (Debian's chromium driven by
Playwright): the runs a batch wrote are listed, and a run's page shows the executed notebook."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import nbformat
import pytest

from workbench.core import config

pytestmark = [pytest.mark.slow, pytest.mark.browser]

KERNELSPEC = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
EXPERIMENT = "ui-browser"
SEEDS = (0, 1)


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata=KERNELSPEC)
    params = nbformat.v4.new_code_cell(
        f'experiment_name: str = "{EXPERIMENT}"  # experiment\nseed: int = 0  # seed\nn_steps: int = 30  # steps'
    )
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from workbench.tracking.runs import StepLogger, start_run\n"
        'run = start_run(experiment_name, algorithm="uitest", key_params={"seed": seed}, params={"seed": seed})\n'
        "with StepLogger() as steps:\n"
        "    for s in range(n_steps):\n"
        "        steps.log(s, loss=1 / (s + 1))\n"
        'print("logged", n_steps, "steps")\n'
        "run.end()"
    )
    nb.cells = [nbformat.v4.new_markdown_cell("# UI browser fixture"), params, body]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _fill_with_batch(project: Path, env: dict[str, str]) -> None:
    import yaml

    _notebook(project / "notebooks" / "uitest.ipynb")
    doc = {
        "notebook": "notebooks/uitest.ipynb",
        "experiment": EXPERIMENT,
        "grid": {"seed": list(SEEDS)},
    }
    (project / "batch.yaml").write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "batch", "batch.yaml", "--jobs", "2"],
        env=env, cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _fill_with_tracking(project: Path) -> None:
    """Without the runner: execute the notebook with nbclient, log it with workbench.tracking."""
    from nbclient import NotebookClient

    from workbench import tracking

    src = _notebook(project / "notebooks" / "uitest.ipynb")
    for seed in SEEDS:
        nb = nbformat.read(src, as_version=4)
        nb.cells[1].source = f'experiment_name = "{EXPERIMENT}-scratch"\nseed = {seed}\nn_steps = 5'
        NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(src.parent)}}).execute()
        out = project / f"executed-seed{seed}.ipynb"
        nbformat.write(nb, out)
        with tracking.start_run(
            EXPERIMENT, algorithm="uitest", key_params={"seed": seed}, params={"seed": seed}
        ):
            mlflow.log_artifact(str(out), "report")


@pytest.fixture
def filled_store(chromium, tmp_path, monkeypatch):
    """A project with its own SQLite store holding two runs, each with an executed notebook.

    Asks for ``chromium`` first, so a missing browser skips (or fails) before anything starts."""
    from workbench.core import store

    project = tmp_path / "project"
    project.mkdir()
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    env = {**os.environ}
    try:
        from workbench.run import runner

        has_runner = hasattr(runner, "batch_command")
    except ImportError:
        has_runner = False
    if has_runner:
        _fill_with_batch(project, env)
    else:
        _fill_with_tracking(project)
    yield project, env
    store.forget(uri)


@pytest.fixture
def ui_process(filled_store):
    """`workbench ui` on a free port; stopped with SIGTERM (as Ctrl-C would) at the end."""
    import psutil

    from workbench.core.ports import free_port, wait_http
    from workbench.server.team import health

    project, env = filled_store
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "ui", "--port", str(port)],
        env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_http(url + "/health", proc=proc, timeout=180):
        assert proc.poll() is None, proc.communicate()[0]
        raise AssertionError("workbench ui did not answer")
    family = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    yield url
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, out
    assert not health(url)
    left = [
        p
        for p in family
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert left == [], f"workbench ui left processes behind: {left}"


def test_ui_lists_batch_runs_and_shows_the_executed_notebook(
    ui_process, filled_store, chromium, tmp_path
):
    from playwright.sync_api import expect

    url = ui_process
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(SEEDS)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    # The link the workbench prints for an experiment opens its runs (the training view),
    # not MLflow 3's GenAI view with "Traces".
    link = config.experiment_url(exp.experiment_id)
    page.goto(url + link[link.index("/#/") :])
    for r in runs:
        expect(page.get_by_text(r.info.run_name, exact=True)).to_be_visible(timeout=60_000)
    run_link = config.run_url(exp.experiment_id, runs[0].info.run_id)
    page.goto(url + run_link[run_link.index("/#/") :])
    expect(page.get_by_text(runs[0].info.run_name).first).to_be_visible(timeout=60_000)
    page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs")
    for r in runs:
        expect(page.get_by_text(r.info.run_name, exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_text(f"{len(runs)} matching runs")).to_be_visible()
    page.screenshot(path=str(shots / "runs.png"))

    run = runs[0]
    notebook = next(
        a.path
        for a in client.list_artifacts(run.info.run_id, "report")
        if a.path.endswith(".ipynb")
    )
    page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts")
    page.get_by_text("report", exact=True).click(timeout=60_000)
    page.get_by_text(Path(notebook).name, exact=True).click(timeout=30_000)
    expect(page.get_by_text(notebook, exact=True)).to_be_visible(timeout=30_000)
    # the executed notebook's content, outputs included, is what the viewer shows
    expect(page.get_by_text('"cell_type": "code"').first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("logged").first).to_be_visible()
    page.screenshot(path=str(shots / "run-notebook.png"))
    assert (shots / "runs.png").stat().st_size > 10_000
    keep = os.environ.get("WORKBENCH_TEST_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, Path(keep), dirs_exist_ok=True)
