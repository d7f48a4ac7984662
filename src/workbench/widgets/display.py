"""Whether a widget frontend is attached, and the static fallback when it is not: figures
as PNG bytes, displayed as images (readable in papermill, nbval and runner reports, where a
widget would show up as an unreadable "VBox(...)" line). See ``workbench.widgets``.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDGETS_ENV = "WORKBENCH_WIDGETS"


def interactive_frontend() -> bool:
    """Whether a widget frontend is (very likely) attached to this kernel; see module doc."""
    forced = os.environ.get(WIDGETS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get("WORKBENCH_RUN_ID"):
        return False
    from IPython import get_ipython

    if getattr(get_ipython(), "kernel", None) is None:
        return False
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (displayable everywhere, unlike a Figure object)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def display_objects(*objs: Any) -> None:
    from IPython.display import display

    display(*objs)


def show_figure(fig: Figure) -> None:
    """Display a matplotlib figure as a PNG, whatever the backend (inline, Agg, none)."""
    from IPython.display import Image

    display_objects(Image(data=figure_png(fig)))
