"""The forked child of a kernel template: it becomes the job's kernel.

``workbench.run.template`` forks one child per job; ``become_kernel`` gives it the job's
session, working directory and environment, sizes the BLAS pool and picks the matplotlib
backend the job asks for, then runs ``IPKernelApp`` as ``ipykernel_launcher`` would. Its exit
joins threads and runs ``atexit`` handlers but skips the module teardown that would copy
every page it shares with the template (``_exit_quickly``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def become_kernel(req: dict) -> int:
    """In the forked child: take the job's session, directory and environment, then
    run the kernel as ``ipykernel_launcher`` would. Returns the exit code."""
    os.setsid()
    os.chdir(req["cwd"])
    env = dict(req["env"])
    env["JPY_PARENT_PID"] = str(os.getppid())
    os.environ.clear()
    os.environ.update(env)
    _blas_threads(env)
    _reseed()
    _matplotlib_backend(env)
    import ipykernel_launcher
    from ipykernel.kernelapp import IPKernelApp

    sys.argv = [ipykernel_launcher.__file__, *req["argv"]]
    # ipykernel read JPY_PARENT_PID when the template imported it: name the parent here,
    # so the kernel exits if the template dies (as a fresh kernel does with its launcher).
    IPKernelApp.launch_instance(argv=list(req["argv"]), parent_handle=os.getppid())
    _stop_message_threads(IPKernelApp.instance())
    _exit_quickly(0)
    return 0


def _stop_message_threads(app: Any) -> None:
    """Stop the kernel's control and shell threads while its IOPub thread still runs.

    ipykernel 7's ``IPKernelApp.close`` stops IOPub first and then joins the control thread;
    when the control thread is still finishing the shutdown request (it flushes stdout and
    stderr through IOPub afterwards) that flush waits for a thread that is gone, and the
    kernel hangs until jupyter_client kills it 2.5 s later (measured here: one shutdown in
    five). Stopped in this order the flush goes through and ``close`` finds them done.
    """
    for name in ("control_thread", "shell_channel_thread"):
        thread = getattr(app, name, None)
        if thread is not None and thread.is_alive():
            thread.stop()
            thread.join(timeout=2.0)


def _exit_quickly(code: int) -> None:
    """Python's exit steps, then ``os._exit``: without the module teardown that follows them.

    A forked kernel shares the template's pages; tearing its modules down writes to every
    object they hold, which copies each shared page first (0.25 s a kernel, measured). The
    steps that matter run as in any exit: non-daemon threads are joined and ``atexit``
    handlers run (IPython saves its history and clears the user's namespace, MLflow flushes),
    then the standard streams are flushed. Uses CPython's own ``threading._shutdown`` and
    ``atexit._run_exitfuncs``; without them the usual exit follows.
    """
    import atexit
    import threading

    join_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if join_threads is None or run_exit_handlers is None:
        return
    join_threads()
    run_exit_handlers()
    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _blas_threads(env: dict[str, str]) -> None:
    """Give OpenBLAS the thread count the job's environment asks for (the template ran it
    with one, so that no BLAS thread existed before the fork)."""
    import ctypes

    wanted = next(
        (
            env[k]
            for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
            if env.get(k)
        ),
        "",
    )
    try:
        count = int(wanted.split(",")[0]) if wanted else len(os.sched_getaffinity(0))
    except ValueError:
        count = len(os.sched_getaffinity(0))
    if count <= 1:
        return
    for path in _loaded_libraries("openblas"):
        lib = ctypes.CDLL(path)
        for symbol in (
            "openblas_set_num_threads",
            "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_",
        ):
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(count)
                break


def _loaded_libraries(fragment: str) -> list[str]:
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").split(None, 5)[-1]
            if path.startswith("/") and fragment in os.path.basename(path).lower():
                paths.add(path)
    return sorted(paths)


def _reseed() -> None:
    """numpy's global generator was seeded once, in the template: give each job its own."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _matplotlib_backend(env: dict[str, str]) -> None:
    """The job's backend (what ipykernel would set), chosen before any figure exists."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None:
        matplotlib.rcParams["backend"] = env.get("MPLBACKEND") or INLINE_BACKEND
