"""Helpers shared by the runner tests (fixtures live in conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
# the console script: `python -m workbench.cli` would load cli twice (two UsageError classes)
WORKBENCH = [str(Path(sys.executable).parent / "workbench")]


def runs_of(experiment: str):
    """Every run of an experiment in the current store (empty if it does not exist)."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=1000)
