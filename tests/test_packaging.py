"""The project's own files agree with each other: dependencies, notebooks, the command."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(specs):
    return {
        re.split(r"[<>=!~\[ ;]", s.strip(), maxsplit=1)[0].lower(): s.replace(" ", "")
        for s in specs
    }


def test_environment_yml_mirrors_pyproject_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    from_env = _names(p for p in pip if not p.startswith("-e"))
    from_pyproject = _names(project["dependencies"])
    assert from_env == from_pyproject, "environment.yml and pyproject.toml must name the same pins"
    assert "-e ." in pip, "environment.yml installs this package"
    assert any(str(d).startswith("python>=3.11") for d in env["dependencies"])


def test_notebooks_are_stripped_and_parameterised():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), (
            f"{path.name} has outputs"
        )
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        source = "".join(tagged[0]["source"])
        for common in ("experiment_name: str", "dataset: str", "target: str", "seed: int"):
            assert common in source, f"{path.name} lacks the common parameter {common!r}"
        assert (ROOT / "params" / path.stem / "smoke.yaml").exists(), (
            f"params/{path.stem}/smoke.yaml"
        )


def test_command_help_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for command in (
        "doctor",
        "run",
        "batch",
        "report",
        "ui",
        "lab",
        "serve",
        "server",
        "search-worker",
    ):
        assert command in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2


def test_doctor_reports_the_store(tracking_uri):
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "doctor"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert tracking_uri in out.stdout and "(from env)" in out.stdout
    assert "jupyter kernel" in out.stdout


def test_doctor_names_the_fix_for_a_broken_store(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/x/mlflow.db")
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "doctor"], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "BAD" in out.stdout and "fix:" in out.stdout


def _imported_top_level_modules() -> set[str]:
    import ast

    names: set[str] = set()
    for path in (ROOT / "src" / "workbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"workbench"}


def test_every_third_party_import_of_the_package_is_declared():
    """A package imported by src/ but only installed as somebody else's dependency breaks the
    day that somebody drops it: each one must be named in pyproject (and environment.yml)."""
    import importlib.metadata as md

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(_names(project["dependencies"]))
    for extra in project.get("optional-dependencies", {}).values():
        declared |= set(_names(extra))
    declared = {re.sub(r"[-_.]+", "-", d) for d in declared}
    providers = md.packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {re.sub(r"[-_.]+", "-", d.lower()) for d in providers.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported by src/workbench but not declared in pyproject: {missing}"


def test_a_broken_store_is_an_error_message_not_a_traceback(tmp_path):
    """StoreError (and the workbench's other errors) reach the terminal as one clear line."""
    bad = tmp_path / "mlflow.db"
    bad.write_text("not a database, whatever the name says\n")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{bad}",
        "WORKBENCH_PROJECT_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "report"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "workbench report: error:" in out.stderr
