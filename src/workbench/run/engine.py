"""One papermill execution with a per-job kernel environment, and the report files after it.

papermill's nbclient engine starts the kernel with the runner's own ``os.environ``; a batch
worker runs many jobs, each with its own run id, so the environment must travel with the
job instead. The small engine below passes ``env`` and ``cwd`` to the kernel manager's
``start_kernel`` (papermill forwards engine keyword arguments; nbclient forwards ``execute``
keyword arguments to ``start_kernel``) and records whether the kernel ever became ready, so
the runner can tell "the kernel never started" (retry) from "the notebook failed".

The run's id is not in that environment: the runner creates the run while the kernel starts
(see ``workbench.run_store``). Once the kernel is ready and before the first cell, the client
calls the runner's ``handoff``, which waits for the run and returns the per-run variables;
a silent execution (no cell, no output, no history) puts them in the kernel's ``os.environ``.
MLflow and ``workbench.tracking`` read them at call time, so a notebook that imports either
in its first cell still logs into the runner's run. Kernels for other languages cannot take
a Python snippet: for them the runner waits for the run before the kernel starts.

The HTML twin's exporter is built and its templates compiled on a thread while the notebook
runs (``warm_exporter``), so writing the twin afterwards costs milliseconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core import jupyter_compat

ENGINE_NAME = "workbench"
_registered = False


@dataclass
class Handoff:
    """What the kernel learns once its run exists: environment variables, and the header
    cell's text with the run id (the cell marked ``header_key`` is updated in place)."""

    env: dict[str, str]
    header: str | None = None
    header_key: str | None = None


class HandoffError(RuntimeError):
    """The run could not be handed to the kernel (the run was not created, or the kernel
    refused the snippet); the kernel is shut down and no cell ran."""


def _env_snippet(env: dict[str, str]) -> str:
    return f"import os as _wb_os\n_wb_os.environ.update({env!r})\ndel _wb_os\n"


def _quiet_logger() -> logging.Logger:
    """nbclient's own error lines ("Kernel died while waiting...") would duplicate the
    runner's verdict; keep them out of the console."""
    log = logging.getLogger("workbench.nbclient")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    return log


def _set_header(cells, given: Handoff) -> None:
    """Put the run's header text into the cell marked ``given.header_key``, if any."""
    if given.header is None:
        return
    for cell in cells:
        if cell.get("metadata", {}).get(given.header_key):
            cell.source = given.header


def _register_engine() -> None:
    """Register the ``workbench`` papermill engine (once per process)."""
    global _registered
    if _registered:
        return
    from papermill.engines import papermill_engines

    papermill_engines.register(ENGINE_NAME, _engine_class(_client_class()))
    _registered = True


def _client_class() -> type:
    """papermill's notebook client, plus: a launch callback, the "kernel started" record,
    and the hand-over of the run's environment before the first cell."""
    from papermill.clientwrap import PapermillNotebookClient

    class _Client(PapermillNotebookClient):
        wb_state: dict[str, Any]
        wb_handoff: Callable[[], Handoff] | None = None
        wb_on_launch: Callable[[], None] | None = None

        def start_new_kernel_client(self):
            # The kernel process is launched; it boots on its own core from here.
            if self.wb_on_launch is not None:
                self.wb_on_launch()
            return super().start_new_kernel_client()

        def papermill_execute_cells(self):
            # Reached only after the kernel answered kernel_info: it started.
            self.wb_state["started"] = True
            if self.wb_handoff is not None:
                self._wb_hand_over(self.wb_handoff)
            return super().papermill_execute_cells()

        def _wb_hand_over(self, handoff: Callable[[], Handoff]) -> None:
            try:
                given = handoff()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise HandoffError(str(exc)) from exc
            msg_id = self.kc.execute(
                _env_snippet(given.env), silent=True, store_history=False, allow_stdin=False
            )
            reply = self.wait_for_reply(msg_id)
            content = (reply or {}).get("content", {})
            if content.get("status") != "ok":
                why = f"{content.get('ename', 'no reply')}: {content.get('evalue', '')}"
                raise HandoffError(f"the kernel did not take the run's environment: {why}")
            _set_header(self.nb.cells, given)

    return _Client


def _engine_class(client_class: type) -> type:
    """papermill's nbclient engine, starting the kernel with the job's ``env`` and ``cwd``
    (and its stdout/stderr in ``kernel_log``) through ``client_class``."""
    from papermill.engines import NBClientEngine
    from papermill.utils import remove_args

    class _Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            kernel_env=None,
            kernel_cwd=None,
            wb_state=None,
            wb_handoff=None,
            wb_on_launch=None,
            kernel_log=None,
            **kwargs,
        ):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            client = client_class(
                nb_man,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                kernel_manager_class=jupyter_compat.fast_exit_kernel_manager(),
                log=_quiet_logger(),
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                **kwargs,
            )
            client.wb_state = wb_state if wb_state is not None else {}
            client.wb_handoff, client.wb_on_launch = wb_handoff, wb_on_launch
            if kernel_log is None:
                return client.execute(env=kernel_env, cwd=kernel_cwd)
            with open(kernel_log, "ab") as log:  # the kernel's own stdout/stderr, not cell output
                return client.execute(env=kernel_env, cwd=kernel_cwd, stdout=log, stderr=log)

    return _Engine


def run_papermill(
    nb,
    out: Path,
    parameters: dict[str, Any],
    env: dict[str, str],
    timeout: float | None,
    state: dict[str, Any],
    cwd: str | None = None,
    kernel_log: Path | None = None,
    handoff: Callable[[], Handoff] | None = None,
    on_launch: Callable[[], None] | None = None,
) -> tuple[str, str]:
    """Execute ``nb`` into ``out``; return (status, reason): FINISHED, FAILED or KILLED.

    ``state["started"]`` tells whether the kernel became ready; ``state["interrupted"]``
    is set on Ctrl-C (status KILLED) so the caller can finish the run and then stop;
    ``state["handoff_failed"]`` when ``handoff`` raised (no cell ran; the kernel is shut
    down). ``on_launch`` is called once the kernel process is launched.
    """
    import copy

    import papermill

    _register_engine()
    logging.getLogger("papermill").setLevel(logging.ERROR)
    if handoff is not None and _language(nb) != "python":
        given = handoff()  # no Python snippet for this kernel: the run goes in its start env
        env = {**env, **given.env}
        _set_header(nb.cells, given)
        handoff = None
    try:
        papermill.execute_notebook(
            copy.deepcopy(nb),
            str(out),
            parameters=parameters or None,
            engine_name=ENGINE_NAME,
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
            kernel_env=env,
            kernel_cwd=cwd,
            wb_state=state,
            wb_handoff=handoff,
            wb_on_launch=on_launch,
            kernel_log=str(kernel_log) if kernel_log else None,
        )
        return "FINISHED", ""
    except KeyboardInterrupt:
        state["interrupted"] = True
        return "KILLED", "interrupted (Ctrl-C)"
    except Exception as exc:
        return _failure(exc, timeout, state)


def _failure(exc: Exception, timeout: float | None, state: dict[str, Any]) -> tuple[str, str]:
    """(status, reason) for what stopped an execution: a hand-over, a cell, a timeout, a
    dead kernel, or a kernel that never started."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, HandoffError):
        state["handoff_failed"] = True
        return "FAILED", f"the run could not be handed to the kernel: {exc}"[:1000]
    if isinstance(exc, PapermillExecutionError):
        where = f"cell [{exc.exec_count}]" if exc.exec_count else f"cell {exc.cell_index}"
        return "FAILED", f"{where} raised {exc.ename}: {exc.evalue}"[:1000]
    if isinstance(exc, CellTimeoutError):
        return "FAILED", f"a cell ran longer than the timeout of {timeout:g} s"
    if isinstance(exc, DeadKernelError):
        return "KILLED", "the kernel died while a cell ran (killed, crashed or out of memory)"
    if not state.get("started"):
        return "FAILED", f"the kernel never started: {type(exc).__name__}: {exc}"[:1000]
    return "FAILED", f"{type(exc).__name__}: {exc}"[:1000]


def _language(nb) -> str:
    meta = nb.get("metadata", {})
    lang = meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name")
    return str(lang or "python").lower()


_exporter: Future | None = None
_exporter_guard = threading.Lock()
_export_lock = threading.Lock()


def _build_exporter():
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    v4 = nbformat.v4
    blank = v4.new_notebook(cells=[v4.new_markdown_cell("# *warm*"), v4.new_code_cell("1")])
    exporter.from_notebook_node(blank)  # compiles the templates and the markdown renderer
    return exporter


def warm_exporter() -> Future:
    """Build the HTML exporter on a thread (once per process); its future."""
    global _exporter
    with _exporter_guard:
        if _exporter is None:
            fut: Future = Future()

            def work() -> None:
                try:
                    fut.set_result(_build_exporter())
                except BaseException as exc:
                    fut.set_exception(exc)

            threading.Thread(target=work, name="workbench-warm-html", daemon=True).start()
            _exporter = fut
        return _exporter


def _to_html(nb) -> str:
    try:
        exporter = warm_exporter().result()
    except Exception:  # the warm-up failed: a fresh exporter reports the real problem
        from nbconvert import HTMLExporter

        exporter = HTMLExporter()
    with _export_lock:  # one exporter, one notebook at a time
        body, _ = exporter.from_notebook_node(nb)
    return body


def finalize_report(out: Path, html: Path, header: str, header_key: str) -> None:
    """Put the final header cell first in the executed notebook and write its HTML twin."""
    import nbformat

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:  # empty or partial file: start from a blank notebook
        nb = nbformat.v4.new_notebook()
    cells = [c for c in nb.cells if not c.get("metadata", {}).get(header_key)]
    cell = nbformat.v4.new_markdown_cell(header)
    cell.metadata[header_key] = True
    nb.cells = [cell, *cells]
    nbformat.write(nb, str(out))
    html.write_text(_to_html(nb), encoding="utf-8")
