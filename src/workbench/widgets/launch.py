"""The launch form: typed inputs built from a notebook's ``parameters`` cell (papermill reads
its ``name: type = value  # help`` lines) that start ``workbench run`` in the background and
show its progress and the run's link.

Kept apart from the run explorer: it starts processes and follows their output, the
explorer only reads the tracking store.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_URL = re.compile(r"https?://[^\s'\"<>]+")
_RUNNER_ENV = ("WORKBENCH_RUN_ID", "WORKBENCH_NOTEBOOK", "WORKBENCH_PARAMS_FILE")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's parameters: name -> {type, default (a Python value), help}, read by
    the same reader that ``workbench run`` checks values with."""
    from workbench.run import params

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    out = {}
    for name, spec in params.inspect(path).items():
        default = params.default_value(spec)
        kind = spec.type_name or type(default).__name__
        out[name] = {"type": kind, "default": default, "help": spec.help}
    return out


class LaunchForm:
    """A form built from a notebook's ``parameters`` cell that starts ``workbench run``
    in the background and shows its progress and the resulting run's link."""

    def __init__(
        self, notebook: str | Path, *, experiment: str | None = None, timeout: float | None = None
    ):
        import ipywidgets as w

        self.notebook = Path(notebook)
        self.spec = notebook_parameters(self.notebook)
        self.experiment, self.timeout = experiment, timeout
        self.inputs: dict[str, w.Widget] = {}
        rows = []
        for name, spec in self.spec.items():
            control = self._input(name, spec)
            self.inputs[name] = control
            note = html.escape(f"{spec['type']}" + (f" - {spec['help']}" if spec["help"] else ""))
            rows.append(w.HBox([control, w.HTML(f"<small style='color:#555'>{note}</small>")]))
        self.button = w.Button(description="Run in background", button_style="primary", icon="play")
        # `workbench run` prints no progress of its own: the bar pulses while it runs.
        self.progress = w.IntProgress(value=0, min=0, max=100, description="idle")
        self.log = w.Textarea(value="", layout=w.Layout(width="95%", height="140px"), disabled=True)
        self.result = w.HTML()
        self.button.on_click(lambda _b: self.start())
        title = w.HTML(f"<b>Run {html.escape(self.notebook.name)} with workbench</b>")
        self.widget = w.VBox([title, *rows, self.button, self.progress, self.result, self.log])
        self.widget.add_class("wb-launch-form")
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._thread: threading.Thread | None = None

    @staticmethod
    def _input(name: str, spec: dict[str, Any]):
        import ipywidgets as w

        kind, default = spec["type"], spec["default"]
        style = {"description_width": "160px"}
        if kind == "bool" or isinstance(default, bool):
            return w.Checkbox(value=bool(default), description=name, indent=False, style=style)
        if kind == "int" and isinstance(default, int):
            return w.IntText(value=default, description=name, style=style)
        if kind == "float" and isinstance(default, (int, float)):
            return w.FloatText(value=float(default), description=name, style=style)
        return w.Text(value="" if default is None else str(default), description=name, style=style)

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.inputs.items()}

    def command(self) -> list[str]:
        """The ``workbench run`` command for the current values (only changed ones passed)."""
        cmd = [sys.executable, "-m", "workbench.cli", "run", str(self.notebook)]
        for name, value in self.values().items():
            default = self.spec[name]["default"]
            if value != default and not (value == "" and default is None):
                cmd += ["-p", name, str(value)]
        if self.experiment:
            cmd += ["--experiment", self.experiment]
        if self.timeout:
            cmd += ["--timeout", str(self.timeout)]
        return cmd

    def start(self) -> subprocess.Popen:
        """Start ``workbench run`` in the background (one at a time)."""
        from workbench.core.config import find_project_dir

        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("a run started from this form is still going; wait for it to finish")
        env = {
            k: v for k, v in os.environ.items() if k not in _RUNNER_ENV
        }  # never resume our own run
        self.output = []
        self.result.value = ""
        self.progress.description, self.progress.value, self.progress.bar_style = (
            "starting",
            0,
            "info",
        )
        self.log.value = " ".join(self.command()) + "\n"
        self.process = subprocess.Popen(
            self.command(),
            cwd=find_project_dir(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._thread = threading.Thread(target=self._follow, args=(self.process,), daemon=True)
        self._thread.start()
        return self.process

    def _follow(self, proc: subprocess.Popen) -> None:
        started = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))
            self.progress.description = f"{time.monotonic() - started:.0f} s"
            self.progress.value = (self.progress.value + 10) % 100
            self.log.value = "\n".join(self.output[-30:])
        code = proc.wait()
        self.progress.value = 100
        self.progress.bar_style = "success" if code == 0 else "danger"
        self.progress.description = "done" if code == 0 else f"failed ({code})"
        links = _URL.findall("\n".join(self.output))
        link = (
            f" - <a href='{html.escape(links[-1])}' target='_blank'>{html.escape(links[-1])}</a>"
            if links
            else ""
        )
        self.result.value = (
            f"<b>{'finished' if code == 0 else 'failed'}</b> (exit code {code}){link}"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the background run; returns its exit code."""
        if self.process is None:
            raise RuntimeError("nothing started yet: call start() or press the button")
        code = self.process.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
