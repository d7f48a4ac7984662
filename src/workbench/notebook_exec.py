"""One papermill execution with a per-job kernel environment, and the report files after it.

papermill's nbclient engine starts the kernel with the runner's own ``os.environ``; a batch
worker runs many jobs, each with its own run id, so the environment must travel with the
job instead. The small engine below passes ``env`` and ``cwd`` to the kernel manager's
``start_kernel`` (papermill forwards engine keyword arguments; nbclient forwards ``execute``
keyword arguments to ``start_kernel``) and records whether the kernel ever became ready, so
the runner can tell "the kernel never started" (retry) from "the notebook failed".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

ENGINE_NAME = "workbench"
_registered = False


def _quiet_logger() -> logging.Logger:
    """nbclient's own error lines ("Kernel died while waiting...") would duplicate the
    runner's verdict; keep them out of the console."""
    log = logging.getLogger("workbench.nbclient")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    return log


def _register_engine() -> None:
    global _registered
    if _registered:
        return
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.utils import remove_args

    class _Client(PapermillNotebookClient):
        def papermill_execute_cells(self):
            # Reached only after the kernel answered kernel_info: it started.
            self.wb_state["started"] = True
            return super().papermill_execute_cells()

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
            kernel_log=None,
            **kwargs,
        ):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            client = _Client(
                nb_man,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=_quiet_logger(),
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                **kwargs,
            )
            client.wb_state = wb_state if wb_state is not None else {}
            if kernel_log is None:
                return client.execute(env=kernel_env, cwd=kernel_cwd)
            with open(kernel_log, "ab") as log:  # the kernel's own stdout/stderr, not cell output
                return client.execute(env=kernel_env, cwd=kernel_cwd, stdout=log, stderr=log)

    papermill_engines.register(ENGINE_NAME, _Engine)
    _registered = True


def run_papermill(
    nb,
    out: Path,
    parameters: dict[str, Any],
    env: dict[str, str],
    timeout: float | None,
    state: dict[str, Any],
    cwd: str | None = None,
    kernel_log: Path | None = None,
) -> tuple[str, str]:
    """Execute ``nb`` into ``out``; return (status, reason): FINISHED, FAILED or KILLED.

    ``state["started"]`` tells whether the kernel became ready; ``state["interrupted"]``
    is set on Ctrl-C (status KILLED) so the caller can finish the run and then stop.
    """
    import copy

    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    _register_engine()
    logging.getLogger("papermill").setLevel(logging.ERROR)
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
            kernel_log=str(kernel_log) if kernel_log else None,
        )
        return "FINISHED", ""
    except PapermillExecutionError as exc:
        where = f"cell [{exc.exec_count}]" if exc.exec_count else f"cell {exc.cell_index}"
        return "FAILED", f"{where} raised {exc.ename}: {exc.evalue}"[:1000]
    except CellTimeoutError:
        return "FAILED", f"a cell ran longer than the timeout of {timeout:g} s"
    except DeadKernelError:
        return "KILLED", "the kernel died while a cell ran (killed, crashed or out of memory)"
    except KeyboardInterrupt:
        state["interrupted"] = True
        return "KILLED", "interrupted (Ctrl-C)"
    except Exception as exc:
        if not state.get("started"):
            return "FAILED", f"the kernel never started: {type(exc).__name__}: {exc}"[:1000]
        return "FAILED", f"{type(exc).__name__}: {exc}"[:1000]


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
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
