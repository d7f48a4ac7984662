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
a silent execution (no cell, no output, no history) puts them in the kernel's ``os.environ``
and installs ``tracking.handover``, so plain ``mlflow.start_run()`` resumes the run too.
MLflow and ``workbench.tracking`` read them at call time, so a notebook that imports either
in its first cell still logs into the runner's run. Kernels for other languages cannot take
a Python snippet: for them the runner waits for the run before the kernel starts.

Secrets stay out of the saved notebook: papermill injects (and autosaves) the parameters
with secret names and URL passwords masked (``workbench.core.secrets``), and the kernel
client swaps in the cell with the real values only on its way to the kernel. The kernel dies
with the process that started it (``_die_with_parent``), so a runner or batch worker killed
outright leaves no kernel behind; a signal to the runner interrupts the execution
(``run.signals``) and papermill shuts the kernel down on the way out.

The HTML twin's exporter is built and its templates compiled on a thread while the notebook
runs (``warm_exporter``), so writing the twin afterwards costs milliseconds.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.run import kernels, saves, signals
from workbench.run.jobs import DEFAULT_KERNEL, RunOptions

ENGINE_NAME = "workbench"
INJECTED_TAG = "injected-parameters"  # papermill's tag for the cell it adds
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
    """The run's variables into the kernel's ``os.environ``, and the hand-over hook that makes
    plain ``mlflow.start_run()`` resume the run (``tracking.handover``)."""
    from workbench.tracking import handover

    return handover.snippet(env)


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
        wb_real_injected: str | None = None  # the injected cell with the real values
        _wb_swap: tuple[str, str] | None = None  # (shown source, real source), once

        def log_output_message(self, output) -> None:
            # --log-output: cell output on this terminal as it comes (papermill's meaning),
            # stdout to stdout and stderr to stderr; not through the quiet logger
            if not self.log_output:
                return
            if output.output_type == "stream":
                stream = sys.stderr if output.name == "stderr" else sys.stdout
                stream.write("".join(output.text))
                stream.flush()
            elif "text/plain" in output.get("data", {}):
                sys.stdout.write("".join(output.data["text/plain"]) + "\n")
                sys.stdout.flush()

        def start_new_kernel_client(self):
            # The kernel process is launched; it boots on its own core from here.
            if self.wb_on_launch is not None:
                self.wb_on_launch()
            kc = super().start_new_kernel_client()
            if self.wb_real_injected is not None:
                _send_real_source(self, kc)
            return kc

        def execute_cell(self, cell, cell_index, *args, **kwargs):
            tags = cell.get("metadata", {}).get("tags", [])
            if self.wb_real_injected is None or INJECTED_TAG not in tags:
                return super().execute_cell(cell, cell_index, *args, **kwargs)
            self._wb_swap = (cell.source, self.wb_real_injected)
            try:
                out = super().execute_cell(cell, cell_index, *args, **kwargs)
            finally:
                swapped, self._wb_swap = self._wb_swap is None, None
            if not swapped:  # the kernel ran the masked values: its results would be wrong
                raise HandoffError("the parameters could not be handed to the kernel")
            return out

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


def _send_real_source(client: Any, kc: Any) -> None:
    """Make the kernel client send the injected cell's real source in place of the masked
    one the notebook shows (only for the cell ``execute_cell`` marked, only once)."""
    original = kc.execute

    def execute(code, *args, **kwargs):
        swap = client._wb_swap
        if swap is not None and code == swap[0]:
            code, client._wb_swap = swap[1], None
        return original(code, *args, **kwargs)

    kc.execute = execute


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel killed when the process that starts it dies
    (Linux ``PR_SET_PDEATHSIG``): a runner or worker killed outright takes its kernel along,
    which then cannot end the run with MLflow's exit hook either. None elsewhere.

    The death signal follows the *thread* that started the kernel; the runner starts its
    kernels on the thread that waits for them, so it outlives them.
    """
    import os
    import sys

    if sys.platform != "linux":
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec


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
            wb_real_injected=None,
            kernel_log=None,
            **kwargs,
        ):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            client = client_class(
                nb_man,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                # forked from the worker's pre-imported template when it has one
                kernel_manager_class=kernels.kernel_manager_class(nb_man.nb),
                log=_quiet_logger(),
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                **kwargs,
            )
            client.wb_state = wb_state if wb_state is not None else {}
            client.wb_handoff, client.wb_on_launch = wb_handoff, wb_on_launch
            client.wb_real_injected = wb_real_injected
            launch = {"env": kernel_env, "cwd": kernel_cwd, "preexec_fn": _die_with_parent()}
            coalesced = saves.CoalescedSaves(nb_man)
            try:
                if kernel_log is None:
                    return client.execute(**launch)
                with open(kernel_log, "ab") as log:  # the kernel's stdout/stderr, not cells'
                    return client.execute(**launch, stdout=log, stderr=log)
            finally:
                coalesced.close()  # papermill's final save follows

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
    options: RunOptions | None = None,
    language: str | None = None,
) -> tuple[str, str]:
    """Execute ``nb`` into ``out``; return (status, reason): FINISHED, FAILED or KILLED.

    ``options`` are papermill's (kernel, start timeout, report mode, output streaming; the
    working directory is ``cwd``); the kernel defaults to the notebook's, else python3, and
    ``language`` to the notebook's.

    ``state["started"]`` tells whether the kernel became ready; ``state["interrupted"]``
    holds the KeyboardInterrupt (Ctrl-C, or ``signals.Terminated`` for SIGTERM/SIGHUP) that
    stopped it (status KILLED), so the caller can finish the run and then stop;
    ``state["handoff_failed"]`` when ``handoff`` raised (no cell ran; the kernel is shut
    down). ``on_launch`` is called once the kernel process is launched. The saved notebook
    shows the parameters with secrets masked; the kernel gets the real values.
    """
    import copy

    import papermill

    _register_engine()
    logging.getLogger("papermill").setLevel(logging.ERROR)
    options = options or RunOptions()
    kernel_name = options.kernel or _kernel_name(nb)
    language = language or _language(nb)
    if handoff is not None and language != "python":
        given = handoff()  # no Python snippet for this kernel: the run goes in its start env
        env = {**env, **given.env}
        _set_header(nb.cells, given)
        handoff = None
    shown, real_source = _masked_parameters(parameters, kernel_name, language)
    try:
        with signals.interruptible():
            papermill.execute_notebook(
                copy.deepcopy(nb),
                str(out),
                parameters=shown or None,
                engine_name=ENGINE_NAME,
                kernel_name=kernel_name,
                language=language,
                progress_bar=False,
                log_output=options.log_output,
                start_timeout=options.start_timeout,
                report_mode=options.report_mode,
                execution_timeout=timeout,
                kernel_env=env,
                kernel_cwd=cwd,
                wb_state=state,
                wb_handoff=handoff,
                wb_on_launch=on_launch,
                wb_real_injected=real_source,
                kernel_log=str(kernel_log) if kernel_log else None,
            )
        verdict = ("FINISHED", "")
    except KeyboardInterrupt as exc:
        state["interrupted"] = exc
        return "KILLED", getattr(exc, "reason", "interrupted (Ctrl-C)")
    except Exception as exc:
        verdict = _failure(exc, timeout, state)
    stop = signals.stopping()
    if stop is not None:  # a signal came, then something else ended the execution first
        state["interrupted"] = stop
        if verdict[0] != "FINISHED":
            return "KILLED", f"{stop.reason} ({verdict[1]})"
    return verdict


def _masked_parameters(
    parameters: dict[str, Any], kernel: str, language: str
) -> tuple[dict[str, Any], str | None]:
    """The parameters as the saved notebook shows them (secrets masked) and, when that
    differs from the real values, the injected cell's source with the real ones."""
    from papermill.translators import translate_parameters

    from workbench.core.secrets import redact

    shown = redact(parameters or {})
    if shown == (parameters or {}):
        return parameters, None
    return shown, translate_parameters(kernel, language, parameters, "Parameters")


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


def _kernel_name(nb) -> str:
    """The notebook's kernel, else python3 (papermill refuses a notebook without one)."""
    return nb.get("metadata", {}).get("kernelspec", {}).get("name") or DEFAULT_KERNEL


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


def warm_exporter(wait: bool = False) -> Future:
    """Build the HTML exporter on a thread (once per process); its future. ``wait``: build
    it here and now instead (a batch's parent does, so its forked workers inherit it)."""
    global _exporter
    with _exporter_guard:
        if _exporter is None:
            fut: Future = Future()

            def work() -> None:
                try:
                    fut.set_result(_build_exporter())
                except BaseException as exc:
                    fut.set_exception(exc)

            if wait:
                work()
            else:
                threading.Thread(target=work, name="workbench-warm-html", daemon=True).start()
            _exporter = fut
        return _exporter


def _to_html(nb, exclude_input: bool = False) -> str:
    try:
        exporter = warm_exporter().result()
    except Exception:  # the warm-up failed: a fresh exporter reports the real problem
        from nbconvert import HTMLExporter

        exporter = HTMLExporter()
    with _export_lock:  # one exporter, one notebook at a time
        exporter.exclude_input = exclude_input  # --report-mode: the cells' outputs only
        body, _ = exporter.from_notebook_node(nb)
    return body


def finalize_report(
    out: Path, html: Path, header: str, header_key: str, report_mode: bool = False
) -> str | None:
    """Put the final header cell first in the executed notebook and write its HTML twin
    (input cells left out in ``report_mode``).

    Returns the problem when the executed notebook could not be read (empty, cut short by
    a full disk, removed): the report then holds the header alone, and the caller says so.
    """
    import nbformat

    problem = None
    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception as exc:  # a blank notebook still carries the header and the verdict
        problem = f"the executed notebook could not be read ({type(exc).__name__}: {exc})"
        nb = nbformat.v4.new_notebook()
        header += f"  \n**report:** {problem}"
    cells = [c for c in nb.cells if not c.get("metadata", {}).get(header_key)]
    cell = nbformat.v4.new_markdown_cell(header)
    cell.metadata[header_key] = True
    nb.cells = [cell, *cells]
    nbformat.write(nb, str(out))
    html.write_text(_to_html(nb, report_mode), encoding="utf-8")
    return problem
