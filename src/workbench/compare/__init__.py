"""Runs as a tidy DataFrame: best run, ranking, overlays, parallel coordinates, diffs.

The public names are those of ``workbench.compare.api`` (its ``__all__``)."""

from workbench.compare.api import *  # noqa: F403
from workbench.compare.api import __all__  # noqa: F401
