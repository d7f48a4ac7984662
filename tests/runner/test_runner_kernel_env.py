"""The kernel starts with MLflow's pickle loading refused, unless the user decided.

MLflow 3.17 unpickles models by default (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` unset);
a notebook the runner executes starts with it ``false``. A value the user set is kept.
"""

from __future__ import annotations

from runner_helpers import NOTEBOOKS

from workbench.core.config import get_settings
from workbench.run import runner


def test_kernels_start_with_pickle_refused(project, monkeypatch):
    job = runner.prepare_job(NOTEBOOKS / "plain.ipynb")
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    assert runner.kernel_env(job, get_settings())["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # the user's own choice
    assert runner.kernel_env(job, get_settings())["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"
