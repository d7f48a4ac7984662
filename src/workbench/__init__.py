"""workbench: a Jupyter-first experimentation workbench on MLflow.

The package is small modules with one concern each; importing ``workbench`` is cheap and
imports none of them (MLflow included) until they are used::

    from workbench import data, tracking, evaluation, models
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_MODULES = (
    "cli", "compare", "config", "data", "doctor", "errors", "evaluation", "lab", "models", "registry", "reports",
    "runner", "search", "search_finish", "search_runs", "search_storage", "server", "serving", "store",
    "tracking", "widgets",
)  # fmt: skip
__all__ = [*_MODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
