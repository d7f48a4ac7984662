"""``workbench run`` ends the way papermill does, and takes papermill's options.

Each parity case runs the same fixture notebook through papermill (in-process, its own
verdict) and through a ``workbench run`` subprocess: success or failure must agree, with the
matching run status. Then the options with papermill's meanings: ``-k``, ``--cwd``, ``-y``,
``-r``, ``--report-mode``, ``--log-output``, ``--start-timeout``, ``--prepare-only``, and
the same keys in batch files.
"""

from __future__ import annotations

import os
import subprocess
import time

import mlflow
import nbformat
import pytest
from runner_helpers import NOTEBOOKS, WORKBENCH, runs_of

from workbench.core import names

pytestmark = pytest.mark.slow

CODE_INPUT = (
    'class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor"'  # a code cell's input (HTML)
)


def _papermill_ok(notebook: str, parameters: dict, out) -> bool:
    """papermill's own verdict on a notebook: True when it executes without error."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{notebook}.ipynb"), str(out), parameters, progress_bar=False
        )
    except PapermillExecutionError:
        return False
    return True


def _report(run, project):
    return nbformat.read(project / run.data.tags[names.TAG_REPORT], as_version=4)


@pytest.mark.parametrize(
    ("notebook", "params", "ok"),
    [
        ("exits", {"how": "none"}, True),  # sys.exit()
        ("exits", {"how": "raise"}, True),  # raise SystemExit
        ("exits", {"how": "0"}, True),  # sys.exit(0)
        ("exits", {"how": "1"}, False),  # sys.exit(1)
        ("syntax_error", {}, False),
        ("magics", {}, True),  # %env, %time, !cmd, %%bash, %matplotlib
    ],
    ids=["sys.exit()", "SystemExit", "sys.exit(0)", "sys.exit(1)", "syntax-error", "magics"],
)
def test_ends_as_papermill_decides(project, run_cli, experiment_name, notebook, params, ok):
    assert _papermill_ok(notebook, params, project / "papermill.ipynb") is ok
    args = [x for name, value in params.items() for x in ("-p", name, value)]
    res = run_cli(
        "run", str(NOTEBOOKS / f"{notebook}.ipynb"), "--experiment", experiment_name, *args
    )
    assert res.returncode == (0 if ok else 1), res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == ("FINISHED" if ok else "FAILED"), run.data.tags
    text = str([c.get("outputs", []) for c in _report(run, project).cells])
    if notebook == "exits":  # execution stops at the exit, as under papermill
        assert "exiting with" in text and "a cell after sys.exit() ran" not in text
    if notebook == "syntax_error":
        assert "SyntaxError" in run.data.tags[names.TAG_REASON]
    if notebook == "magics":
        assert "shell-says-hi" in text and "bash-says-hi" in text and "total 45" in text


def test_a_notebook_without_kernelspec_runs_on_this_python(project, run_cli, experiment_name):
    """papermill refuses it ("No kernel name found"); the runner defaults to python3."""
    with pytest.raises(ValueError, match="No kernel name"):
        _papermill_ok("no_kernelspec", {}, project / "papermill.ipynb")
    nb = str(NOTEBOOKS / "no_kernelspec.ipynb")
    res = run_cli("run", nb, "--experiment", experiment_name)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == "FINISHED" and "python 3" in str(_report(run, project).cells)
    html = (project / run.data.tags[names.TAG_REPORT_HTML]).read_text()
    assert CODE_INPUT in html  # code inputs shown without --report-mode


def test_a_kernel_that_is_not_installed_is_bad_usage(project, run_cli, experiment_name):
    """Exit 2 and nothing ran, like a bad parameter: no kernel can start, so there is no
    execution to record (no run, no report); the message names the fix (-k)."""
    nb = str(NOTEBOOKS / "other_language.ipynb")
    res = run_cli("run", nb, "--experiment", experiment_name)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "'ir'" in res.stderr and "not installed" in res.stderr and "-k" in res.stderr
    assert runs_of(experiment_name) == []
    assert not (project / "runs_reports" / experiment_name).exists()


def test_kernel_option_overrides_the_notebooks_kernelspec(project, run_cli, experiment_name):
    nb = str(NOTEBOOKS / "other_language.ipynb")  # says R; its one cell is valid Python too
    res = run_cli("run", nb, "-k", "python3", "--experiment", experiment_name)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert "hello from R" in str(_report(run, project).cells)


def test_papermill_options_in_one_run(project, experiment_name):
    """--cwd, -y, -p over -y, -r (text kept raw), --report-mode, and --log-output streaming
    cell output to the terminal while the notebook still runs."""
    workdir = project / "elsewhere"
    workdir.mkdir()
    cmd = [
        *WORKBENCH, "run", str(NOTEBOOKS / "options.ipynb"), "--experiment", experiment_name,
        "-k", "python3", "--cwd", str(workdir), "-y", "{alpha: 1.5, gamma: 2}",
        "-p", "gamma", "3", "-r", "code", "007", "--start-timeout", "60",
        "--report-mode", "--log-output",
    ]  # fmt: skip
    env = {**os.environ, "WB_TEST_PAUSE": "4"}  # the last cell waits: output must come first
    with open(project / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            first = ""
            while "cwd" not in first and proc.poll() is None:
                first = proc.stdout.readline()
            still_running = proc.poll() is None
            rest = proc.stdout.read()
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = (project / "stderr.txt").read_text()
    assert proc.returncode == 0, first + rest + err
    assert first.strip() == f"cwd {workdir}" and still_running, "output came only at the end"
    assert "params 1.5 '007' 3" in rest and "result-3" in rest and "last cell" in rest
    assert "to stderr" in err
    (run,) = runs_of(experiment_name)
    report = _report(run, project)
    code = [c for c in report.cells if c.cell_type == "code"]
    assert code and all(c.metadata["jupyter"]["source_hidden"] for c in code)
    html = (project / run.data.tags[names.TAG_REPORT_HTML]).read_text()
    assert CODE_INPUT not in html and "params 1.5" in html and run.info.run_id in html


def test_start_timeout_bounds_the_kernel_start(project, run_cli, experiment_name):
    nb = str(NOTEBOOKS / "no_kernelspec.ipynb")
    res = run_cli("run", nb, "--experiment", experiment_name, "--start-timeout", "0.01")
    assert res.returncode == 1, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    assert run.info.status == "FAILED"
    assert "the kernel never started" in run.data.tags[names.TAG_REASON]


def test_prepare_only_writes_the_parameterized_notebook_and_runs_nothing(
    project, run_cli, experiment_name
):
    nb = str(NOTEBOOKS / "options.ipynb")
    t0 = time.perf_counter()
    res = run_cli("run", nb, "--experiment", experiment_name, "-p", "gamma", "5", "--prepare-only")
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.perf_counter() - t0 < 30
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("prepared:")]
    prepared = nbformat.read(line.split(":", 1)[1].strip(), as_version=4)
    injected = [c for c in prepared.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "gamma = 5" in injected[0].source
    assert all(not c.get("outputs") for c in prepared.cells if c.cell_type == "code")
    assert mlflow.MlflowClient().get_experiment_by_name(experiment_name) is None  # no run


def test_batch_files_take_the_same_keys(project, run_cli, experiment_name):
    workdir = project / "batch-cwd"
    workdir.mkdir()
    batch = project / "options.yaml"
    batch.write_text(
        f"notebook: {NOTEBOOKS / 'options.ipynb'}\nexperiment: {experiment_name}\n"
        f"kernel: python3\ncwd: {workdir}\nstart_timeout: 60\nreport_mode: true\n"
        "parameters: {gamma: 4}\n"
    )
    res = run_cli("batch", str(batch))
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = runs_of(experiment_name)
    report = _report(run, project)
    assert f"cwd {workdir}" in str(report.cells)
    assert all(
        c.metadata["jupyter"]["source_hidden"] for c in report.cells if c.cell_type == "code"
    )
