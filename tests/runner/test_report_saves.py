"""The executed notebook on disk while a notebook runs: papermill's saves, coalesced.

``workbench run`` writes the report at most every half second instead of at every cell's
start and end; a real run shows that coalescing never hides finished cells for long: the
outputs of fast cells are on disk while a long cell after them is still running, and the
finished report holds every cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import nbformat
import pytest
from runner_helpers import WORKBENCH

pytestmark = pytest.mark.slow


def _notebook(path, *cells: str) -> None:
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_code_cell(c) for c in cells])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "P"}
    nbformat.write(nb, str(path))


def _outputs(path) -> list[str]:
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return []
    return ["".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", [])]


def test_a_long_cell_does_not_hide_the_fast_cells_before_it(project, experiment_name):
    nb = project / "long.ipynb"
    _notebook(
        nb,
        "n: int = 3  # parameter",
        "print('fast one')",
        "print('fast two')",
        "import time\ntime.sleep(30)\nprint('long done')",
    )
    proc = subprocess.Popen(
        [*WORKBENCH, "run", str(nb), "--experiment", experiment_name],
        cwd=project, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            reports = list((project / "runs_reports").rglob("*-long-*.ipynb"))
            seen = _outputs(reports[0]) if reports else []
            if "fast two\n" in seen:
                break
            time.sleep(0.1)
        assert "fast two\n" in seen and "long done\n" not in seen, (seen, proc.poll())
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    (report,) = (project / "runs_reports").rglob("*-long-*.ipynb")
    assert _outputs(report) == ["fast one\n", "fast two\n", "long done\n"]
