"""Parameter checks, batch expansion and stale-run recovery: no kernel starts here."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runner_helpers import NOTEBOOKS, runs_of

from workbench import cli
from workbench.core import names, store
from workbench.run import batch, recovery, runner
from workbench.run import params as notebook_params

TRACKED = NOTEBOOKS / "tracked.ipynb"
PLAIN = NOTEBOOKS / "plain.ipynb"


def test_inspect_reads_types_defaults_and_help():
    specs = notebook_params.inspect(TRACKED)
    assert list(specs) == ["experiment_name", "lr", "depth", "tag", "fast"]
    assert specs["lr"].type_name == "float" and specs["lr"].default == "0.1"
    assert specs["lr"].help == "learning rate"
    assert notebook_params.inspect(PLAIN) == {}


def test_annotations_papermill_cannot_read_are_understood():
    specs = notebook_params._parse_source(
        'opt: str | None = None  # optional\nmode: Literal["a", "b"] = "a"\nalpha = 0.5\nitems = [1]'
    )
    assert notebook_params.convert_text(specs["opt"], "None") is None
    assert notebook_params.convert_text(specs["opt"], "hello") == "hello"
    assert notebook_params.convert_text(specs["alpha"], "2") == 2.0
    assert notebook_params.convert_text(specs["items"], "[1, 2]") == [1, 2]
    with pytest.raises(notebook_params.ParameterError, match="one of 'a', 'b'"):
        notebook_params.convert_text(specs["mode"], "c")


def test_values_are_converted_to_the_declared_types():
    job = runner.prepare_job(
        TRACKED, texts=[("lr", "0.5"), ("depth", "7"), ("fast", "false"), ("tag", "007")]
    )
    assert job.parameters == {
        "lr": 0.5,
        "depth": 7,
        "fast": False,
        "tag": "007",
        "experiment_name": "runner-fixture",
    }
    assert job.experiment == "runner-fixture" and job.label == "lr=0.5-depth=7-fast=False-tag=007"
    again = runner.prepare_job(TRACKED, values={"lr": 0.5, "depth": 7, "fast": False, "tag": "007"})
    assert again.param_hash == job.param_hash


def test_unknown_parameter_names_valid_ones_and_closest_match(project, capsys):
    code = cli.main(["run", str(TRACKED), "-p", "learning_rat", "0.1", "-p", "depth", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no parameter 'learning_rat'" in err
    assert "valid parameters: depth, experiment_name, fast, lr, tag" in err
    code = cli.main(["run", str(TRACKED), "-p", "dept", "2"])
    assert code == 2 and "Did you mean 'depth'?" in capsys.readouterr().err


def test_wrong_type_names_expected_type(project, capsys):
    assert cli.main(["run", str(TRACKED), "-p", "depth", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'depth' expects int, got '0.5'" in err and "tree depth" in err


def test_bad_parameters_exit_2_and_write_nothing(project, run_cli, tracking_uri):
    params = project / "bad.yaml"
    params.write_text("lr: fast\n")
    res = run_cli("run", str(TRACKED), "-f", str(params))
    assert res.returncode == 2, res.stderr
    assert "parameter 'lr' expects float" in res.stderr
    res = run_cli("run", str(PLAIN), "-p", "x", "1")
    assert res.returncode == 2 and "has no cell tagged 'parameters'" in res.stderr
    assert not (project / "mlflow.db").exists(), "a rejected run must not touch the store"
    assert not (project / "runs_reports").exists()


def test_batch_expands_grid_runs_and_documents(project, capsys):
    f = project / "b.yaml"
    f.write_text(
        f"notebook: {TRACKED}\nexperiment: e1\nparameters: {{tag: base}}\n"
        "grid: {lr: [0.1, 0.2], depth: [1, 2, 3]}\n"
        f"---\nnotebook: {TRACKED}\nruns:\n  - {{depth: 4}}\n  - {{label: big, parameters: {{depth: 9}}}}\n"
        f"---\nnotebook: {PLAIN.name}\n"  # relative to the batch file's folder, else the project
    )
    (project / PLAIN.name).write_bytes(PLAIN.read_bytes())
    jobs = batch.plan([str(f)], timeout=None)
    assert len(jobs) == 6 + 2 + 1
    assert {j.experiment for j in jobs[:6]} == {"e1"}
    assert jobs[0].parameters["tag"] == "base" and jobs[0].parameters["experiment_name"] == "e1"
    assert [j.label for j in jobs[6:]] == ["depth=4", "big", "default"]
    assert len({j.param_hash for j in jobs}) == 9
    assert cli.main(["batch", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "9 job(s), 9 to run" in out and "lr=0.2-depth=3" in out
    assert not (project / "mlflow.db").exists()


def test_batch_reports_every_problem_before_running(project, capsys):
    f = project / "b.yaml"
    f.write_text(
        "notebook: notebooks/99-missing.ipynb\n---\n"
        f"notebook: {TRACKED}\ngrid: {{depht: [1, 2]}}\n---\nnotebok: x.ipynb\n"
    )
    assert cli.main(["batch", str(f), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "(document 1): notebook not found: notebooks/99-missing.ipynb" in err
    assert "(document 2)" in err and "Did you mean 'depth'?" in err
    assert "(document 3): expected a mapping with a 'notebook:' key" in err
    assert cli.main(["batch", str(project / "nope.yaml")]) == 2
    assert "batch file not found" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()


def test_demo_batch_file_lists_the_notebooks_in_order():
    import yaml

    root = Path(__file__).resolve().parents[2]
    docs = list(yaml.safe_load_all((root / "params" / "demo.yaml").read_text()))
    stems = [Path(d["notebook"]).stem for d in docs]
    assert stems == sorted(stems) and stems[0].startswith("01-") and len(stems) == 7


def test_runs_of_a_dead_runner_are_marked_killed(tracking_uri, experiment_name):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = store.connect()
    exp = store.experiment_id(experiment_name)
    host = socket.gethostname()
    orphan = client.create_run(exp, tags={names.TAG_PID: str(dead.pid), names.TAG_HOST: host})
    mine = client.create_run(exp, tags=recovery.runner_tags())
    other_host = client.create_run(
        exp, tags={names.TAG_PID: str(dead.pid), names.TAG_HOST: "elsewhere"}
    )
    killed = recovery.recover_stale_runs(client)
    assert orphan.info.run_id in killed
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert "died" in client.get_run(orphan.info.run_id).data.tags[names.TAG_REASON]
    assert client.get_run(mine.info.run_id).info.status == "RUNNING"  # its runner is alive
    assert client.get_run(other_host.info.run_id).info.status == "RUNNING"  # cannot tell
    assert len(runs_of(experiment_name)) == 3
    for r in (mine, other_host):
        client.set_terminated(r.info.run_id, "KILLED")


def test_the_runner_process_leaves_mlflow_to_its_store_agent():
    """`workbench run` imports MLflow only in its forked store agent (run_store): imported
    in the runner itself it would hold the GIL for a second while the kernel starts."""
    code = (
        "import sys\n"
        "from workbench.run import agent, engine, runner\n"
        "from workbench.core.config import get_settings\n"
        f"job = runner.prepare_job({str(TRACKED)!r}, texts=[('lr', '0.2')])\n"
        "runner.kernel_env(job, get_settings())\n"
        "runner.header_text(job, None, None, 'STARTING', None)\n"
        "assert 'mlflow' not in sys.modules, 'the runner process imported mlflow'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_batch_scalars_of_the_wrong_type_exit_2_with_the_fix(project, capsys):
    f = project / "b.yaml"
    f.write_text(
        f'notebook: {TRACKED}\ntimeout: "30"\n---\nnotebook: {TRACKED}\nexperiment: 123\n'
        f"---\nnotebook: {TRACKED}\ntimeout: -5\n---\nnotebook: {TRACKED}\nmetric: [a]\n"
    )
    assert cli.main(["batch", str(f), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "(document 1): 'timeout' must be a number of seconds, got str '30'" in err
    assert "timeout: 30" in err, "the fix is named"
    assert "(document 2): 'experiment' must be text, got int 123" in err
    assert "(document 3): 'timeout' must be positive seconds" in err
    assert "(document 4): 'metric' must be text" in err
    assert "Traceback" not in err
    assert not (project / "mlflow.db").exists()


def test_sweep_leaves_runs_of_another_pid_namespace_alone(project, tracking_uri):
    """Two containers can share a hostname: a pid recorded in another pid namespace (or
    before a reboot) names some other process here, so its run is not touched."""
    client = store.connect()
    exp = store.experiment_id("sweep-namespaces")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tags = {**recovery.runner_tags(), names.TAG_PID: str(dead.pid), names.TAG_PSTART: "1"}
    here = client.create_run(exp, tags=tags)
    other = client.create_run(exp, tags={**tags, names.TAG_PIDNS: "another-boot|pid:[1]"})
    killed = recovery.recover_stale_runs(client)
    assert here.info.run_id in killed and other.info.run_id not in killed
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
    client.set_terminated(other.info.run_id, "KILLED")
