"""ipywidgets for JupyterLab: a run explorer and a launch form, with static fallbacks."""

from workbench.widgets.explore import (  # noqa: F401
    MAX_TABLE_COLUMNS,
    WIDGETS_ENV,
    LaunchForm,
    RunExplorer,
    explore,
    figure_png,
    interactive_frontend,
    notebook_parameters,
    show_figure,
)

__all__ = [
    "MAX_TABLE_COLUMNS",
    "WIDGETS_ENV",
    "LaunchForm",
    "RunExplorer",
    "explore",
    "figure_png",
    "interactive_frontend",
    "notebook_parameters",
    "show_figure",
]
