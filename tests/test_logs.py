"""A workbench command's terminal shows the workbench's lines, not MLflow's or alembic's."""

from __future__ import annotations

import os
import subprocess
import sys


def _report(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}",  # a fresh store: migrations
        "WORKBENCH_PROJECT_DIR": str(tmp_path),
    }
    env.pop("MLFLOW_CONFIGURE_LOGGING", None)
    return subprocess.run(
        [sys.executable, "-m", "workbench", *extra, "report"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def test_library_log_lines_go_to_the_log_file_not_the_terminal(tmp_path):
    out = _report(tmp_path)
    assert out.returncode == 0, out.stderr
    terminal = out.stdout + out.stderr
    assert "mlflow.store.db.utils" not in terminal and "alembic" not in terminal.lower(), terminal
    assert "report index:" in out.stdout
    log = (tmp_path / "runs_reports" / "workbench.log").read_text()
    assert "Creating initial MLflow database tables" in log


def test_verbose_shows_them_on_the_terminal_too(tmp_path):
    out = _report(tmp_path, "--verbose")
    assert out.returncode == 0, out.stderr
    assert "Creating initial MLflow database tables" in out.stderr
    assert (
        "Creating initial MLflow database tables"
        in (tmp_path / "runs_reports" / "workbench.log").read_text()
    )


def test_kernels_get_the_environment_as_the_user_had_it(tmp_path, monkeypatch):
    from workbench.core import logs

    monkeypatch.delenv("MLFLOW_CONFIGURE_LOGGING", raising=False)
    logs.route_library_logs(tmp_path / "w.log")
    try:
        assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"
        assert "MLFLOW_CONFIGURE_LOGGING" not in logs.for_kernel(dict(os.environ))
        monkeypatch.setenv("MLFLOW_CONFIGURE_LOGGING", "true")  # the user's own choice stays
        monkeypatch.delenv("WORKBENCH_SET_MLFLOW_CONFIGURE_LOGGING")
        assert logs.for_kernel(dict(os.environ))["MLFLOW_CONFIGURE_LOGGING"] == "true"
    finally:
        import logging

        for name in logs.LIBRARY_LOGGERS:
            logging.getLogger(name).handlers = []
            logging.getLogger(name).propagate = True
