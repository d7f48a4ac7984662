"""workbench: a Jupyter-first experimentation workbench on MLflow.

The package is a house of layers (docs/ARCHITECTURE.md): ``core`` at the bottom,
``tracking`` (what notebooks use) on it, the workflows (``run``, ``search``, ``compare``,
``registry``, ``serve``, ``server``, ``widgets``) above, and the ``cli`` on top. Importing
``workbench`` is cheap: nothing below is imported (MLflow included) until it is used::

    from workbench import data, tracking, evaluation, models
    from workbench import search, compare, registry, serve
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Short names notebooks use for modules that live deeper in the house.
_ALIASES = {
    "data": "workbench.tracking.data",
    "evaluation": "workbench.tracking.evaluation",
    "models": "workbench.tracking.models",
    "config": "workbench.core.config",
    "store": "workbench.core.store",
    "serving": "workbench.serve",  # the name notebooks used before 0.2
}

__all__ = [
    "__version__",
    "cli",
    "compare",
    "config",
    "core",
    "data",
    "evaluation",
    "models",
    "registry",
    "run",
    "search",
    "serve",
    "server",
    "store",
    "tracking",
    "widgets",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``workbench.data``, ``workbench.search`` and friends, imported on first use."""
    if name in _ALIASES:
        return importlib.import_module(_ALIASES[name])
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"workbench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.{name}":
                raise
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
