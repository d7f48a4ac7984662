from pathlib import Path

from workbench.core import config


def test_env_wins_and_artifacts_sit_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x.db")
    s = config.get_settings()
    assert s.source == "env"
    assert s.tracking_uri == f"sqlite:///{tmp_path}/x.db"
    assert s.artifact_root == tmp_path / "mlartifacts"
    assert s.is_embedded and not s.is_remote


def test_pyproject_table_resolved_against_project_not_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(config.PROJECT_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.workbench]\ntracking_uri = "sqlite:///store/db.sqlite"\nartifact_root = "arts"\n'
    )
    nested = tmp_path / "notebooks" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    config._project_settings.cache_clear()
    s = config.get_settings()
    assert s.project_dir == tmp_path.resolve()
    assert s.source == "pyproject"
    assert s.tracking_uri == f"sqlite:///{(tmp_path / 'store' / 'db.sqlite').resolve()}"
    assert s.artifact_root == (tmp_path / "arts").resolve()


def test_default_is_embedded_sqlite_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(config.PROJECT_ENV, str(tmp_path))
    s = config.get_settings()
    assert s.source == "default"
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert s.artifact_root == tmp_path.resolve() / "mlartifacts"


def test_server_uri_has_no_local_artifact_root(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    s = config.get_settings()
    assert s.is_remote and s.artifact_root is None
    assert config.run_url("3", "abc", s) == (
        "http://127.0.0.1:5999/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert config.experiment_url("3", s).endswith("/#/experiments/3?workflowType=machine_learning")


def test_import_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = "import sys, workbench, workbench.core.config; print('mlflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert list(Path(tmp_path).iterdir()) == []
