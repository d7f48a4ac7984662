"""Optuna studies as MLflow runs: the study is a parent run, each trial a nested child run.

The public names are those of ``workbench.search.api`` (its ``__all__``)."""

from workbench.search.api import *  # noqa: F403
from workbench.search.api import __all__  # noqa: F401
