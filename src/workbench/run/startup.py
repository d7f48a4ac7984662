"""Start-up speed of the command processes: what ``workbench run`` and ``batch`` do first."""

from __future__ import annotations

import sys


def skip_slow_imports() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax``, which compiles some 40 grammars at
    import (2-3 s here) for IRI formats no notebook schema uses; nbformat imports jsonschema.
    Only effective before jsonschema is imported; called by the commands, not at import."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def is_command_process() -> bool:
    """True when this process is the ``workbench`` command itself (about to exit), not a
    Python session that called into the runner."""
    main = str(getattr(sys.modules.get("__main__"), "__file__", "") or "")
    return main.endswith(("bin/workbench", "workbench/__main__.py", "workbench/cli/__main__.py"))
