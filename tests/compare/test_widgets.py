"""workbench.widgets driven through the real ipywidgets objects (no frontend needed)."""

from __future__ import annotations

import nbformat
import pytest

from workbench import widgets

PNG = b"\x89PNG"


def test_frontend_detection(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    assert widgets.interactive_frontend() is False  # plain Python: no kernel, no frontend
    monkeypatch.setenv("WORKBENCH_WIDGETS", "1")
    assert widgets.interactive_frontend() is True
    monkeypatch.setenv("WORKBENCH_RUN_ID", "abc")
    monkeypatch.setenv("WORKBENCH_WIDGETS", "")
    assert widgets.interactive_frontend() is False


def test_explorer_filters_sorts_selects_and_refreshes(plain_runs):
    import mlflow

    exp, ids = plain_runs
    ex = widgets.RunExplorer(exp, sort_by="auc_roc", history_metric="auc_roc")
    assert set(ex.frame["run_id"]) == set(ids.values())
    assert ex.sort_by.value == "metrics.auc_roc"
    assert ex.frame["run_name"].iloc[0] in ("gbm-lr0.1", "gbm-lr0.2")  # highest first
    assert "gbm-lr0.05" in ex.table.value and "wb-runs" in ex.table.value
    assert len(ex.runs.options) == len(ids)

    ex.select([ids["trial-0"], ids["trial-1"]])
    assert ex.overlay_png.startswith(PNG) and ex.overlay.value == ex.overlay_png
    assert set(ex.diff["key"]) >= {"learning_rate", "auc_roc"}

    ex.filter.value = "params.model = 'gbm'"  # the widget's own observer refreshes
    assert set(ex.frame["run_name"]) == {
        "gbm-lr0.05",
        "gbm-lr0.1",
        "gbm-lr0.2",
        "search-parent",
        "trial-0",
        "trial-1",
    }
    assert set(ex.runs.value) == {ids["trial-0"], ids["trial-1"]}  # selection kept

    ex.descending.value = False
    assert ex.frame["run_name"].iloc[0] == "trial-0"

    ex.filter.value = "params.model >> 'x'"
    assert ex.error and "MLflow rejected" in ex.status.value  # shown, not raised

    ex.filter.value = ""
    mlflow.set_experiment(exp)
    with mlflow.start_run(run_name="late-arrival"):
        mlflow.log_metric("auc_roc", 0.5)
    ex.refresh_button.click()
    assert "late-arrival" in set(ex.frame["run_name"])


def test_explore_falls_back_to_static_output(plain_runs, capsys):
    exp, _ = plain_runs
    ex = widgets.explore(exp, interactive=False, history_metric="auc_roc")
    assert not ex.frame.empty  # displayed as a DataFrame and a PNG (printed reprs outside IPython)


def _notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            'experiment_name: str = "form-test"  # where to log\nn: int = 3  # how many\nrate: float = 0.5  # a rate\nflag: bool = False  # a switch',
            metadata={"tags": ["parameters"]},
        ),
        nbformat.v4.new_code_cell("print(n * rate)"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_launch_form_builds_typed_inputs(tmp_path):
    import ipywidgets as w

    form = widgets.LaunchForm(_notebook(tmp_path))
    assert isinstance(form.inputs["n"], w.IntText) and form.inputs["n"].value == 3
    assert isinstance(form.inputs["rate"], w.FloatText) and isinstance(
        form.inputs["flag"], w.Checkbox
    )
    assert isinstance(form.inputs["experiment_name"], w.Text)
    assert form.command()[3:] == ["run", str(tmp_path / "tiny.ipynb")]  # defaults are not repeated
    form.inputs["n"].value = 7
    form.inputs["flag"].value = True
    assert form.command()[5:] == ["-p", "n", "7", "-p", "flag", "True"]
    with pytest.raises(FileNotFoundError):
        widgets.LaunchForm(tmp_path / "missing.ipynb")


@pytest.mark.slow
def test_launch_form_runs_workbench_in_the_background(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))  # reports go to tmp
    monkeypatch.setenv("WORKBENCH_RUN_ID", "not-for-the-child")  # must not leak into the child
    form = widgets.LaunchForm(_notebook(tmp_path), experiment="form-test")
    form.inputs["n"].value = 4
    proc = form.start()
    code = form.wait(timeout=180)
    assert code == proc.returncode == 0, "\n".join(form.output)
    assert form.progress.description == "done" and form.progress.value == 100
    assert "exit code 0" in form.result.value and "/runs/" in form.result.value  # the run's link
    assert form.log.value and "not-for-the-child" not in "\n".join(form.output)
