"""Interactive helpers for notebooks: a run explorer and a launch form for ``workbench run``.

``explore([...])`` shows the :class:`RunExplorer`: pick experiments, type an MLflow filter,
sort the runs table by any metric, select runs to overlay their metric histories and see
their parameter diff; *Refresh* re-reads the store, no kernel restart needed.

``LaunchForm("notebooks/01-manual-tracking.ipynb")`` builds typed inputs from a notebook's
``parameters`` cell (papermill reads the ``name: type = value  # help`` lines) and starts
``workbench run`` as a background process, showing its progress and the run's link.

Without a widget frontend (papermill, nbval, the workbench runner) widgets would show up as
an unreadable "VBox(...)" line, so :func:`interactive_frontend` decides what to show:

* ``WORKBENCH_WIDGETS=1`` / ``0`` forces widgets on / off;
* under the workbench runner (``$WORKBENCH_RUN_ID`` is set) there is no frontend: off;
* a kernel started by a Jupyter server (JupyterLab, Notebook) has ``$JPY_SESSION_NAME``,
  VS Code sets ``$VSCODE_PID``: on; anything else (papermill, nbval, plain IPython): off.

When off, ``explore`` displays a plain DataFrame and a static PNG figure instead. The

The explorer lives in ``widgets_explorer``, the launch form in ``widgets_launch``, the
frontend check and the static fallback in ``widgets_display``; their public names are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable

from workbench.widgets.display import (  # noqa: F401  (re-exported: notebooks, tests)
    WIDGETS_ENV,
    display_objects,
    figure_png,
    interactive_frontend,
    show_figure,
)
from workbench.widgets.explorer import MAX_TABLE_COLUMNS, RunExplorer  # noqa: F401
from workbench.widgets.launch import LaunchForm, notebook_parameters  # noqa: F401


def explore(
    experiments: str | Iterable[str] | None = None, *, interactive: bool | None = None, **kwargs
) -> RunExplorer:
    """Show a :class:`RunExplorer`: the widget with a frontend, else a plain DataFrame and
    a static figure (see :func:`interactive_frontend`). Returns the explorer."""
    explorer = RunExplorer(experiments, **kwargs)
    if interactive if interactive is not None else interactive_frontend():
        display_objects(explorer.widget)
    else:
        explorer.static()
    return explorer
