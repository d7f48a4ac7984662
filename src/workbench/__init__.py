"""workbench: a Jupyter-first experimentation workbench on MLflow.

The package is small modules with one concern each; importing ``workbench`` is cheap and
imports none of them (MLflow included) until they are used::

    from workbench import data, tracking, evaluation, models
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The modules notebooks and users reach for; the rest (compare_*, search_*, batch, jobs,
# notebook_*, ports, serving_*) are their parts, importable all the same.
__all__ = [
    "__version__",
    "cli",
    "compare",
    "config",
    "data",
    "doctor",
    "evaluation",
    "lab",
    "models",
    "registry",
    "reports",
    "runner",
    "search",
    "server",
    "serving",
    "store",
    "tracking",
    "widgets",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``workbench.tracking`` and friends, imported on first use."""
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"workbench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.{name}":
                raise
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
