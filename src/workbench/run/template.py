"""The template process of forked kernels: ``python -m workbench.run.template ipykernel_launcher
[--usual] [MODULE ...]``.

A batch worker starts one (``workbench.run.kernels.Template``). It imports what a kernel
imports while it starts (ipykernel, IPython, debugpy), then the modules it is given (what the
batch's notebooks import, read from their import cells) and what those libraries import at
their first call rather than at import (MLflow's SQL store, pyplot), and forks once per job:
the child becomes that job's kernel (its own session, working directory, environment and
connection file; ``IPKernelApp`` as ``ipykernel_launcher`` would start it) without paying
the imports again. A fork waits for those imports (its kernel would need them anyway). A
template that does not know its notebooks in advance (a Dask worker's; ``--usual``) also
imports the usual heavy modules (numpy, pandas, scikit-learn, matplotlib, mlflow) while no
request waits, and a fork it is asked for meanwhile is served between two imports. A batch
of notebooks that import nothing heavy pays for nothing heavy: an import the template made
for no job would only take a core from the jobs running.

Protocol: stdin/stdout, one JSON object a line. Requests ``{"op": "fork" | "preload" | "sync",
"id": n, ...}``; replies ``{"id": n, "pid": p}`` or ``{"id": n, "refused": why}`` (``sync``:
once every import is done); and ``{"exit": pid, "code": c}`` each time it reaps a child. The
kernels are its children: it reaps them and reports their exit codes (negative for a signal,
as ``Popen.returncode``), so their owner learns the truth about a kernel it did not start.

Lifetime: it exits when its stdin closes (the owner exited), killing any kernel left. If the
owner dies outright, the kernel sends the template SIGKILL and then each forked kernel
SIGKILL (Linux ``PR_SET_PDEATHSIG``, set in the template for its owner and in each child for
the template): a batch worker killed outright leaves no template and no kernel behind, as
with a kernel it started itself. Its command line names ``ipykernel_launcher`` (what its
children become): a forked kernel keeps its parent's command line, so ``ps`` and
``pgrep -f ipykernel`` find forked kernels as they find fresh ones.

Why forking is safe here. A process that forks with more than one thread gives its child
locks that may be held forever and thread pools that no longer exist; a socket or store
connection would be shared by two processes. So before each fork the template checks that
it runs one thread, Python's count and the kernel's (``/proc/self/task``), and holds no
descriptor besides its own pipes (no socket, no store file); otherwise it refuses, the job
gets a normal kernel start and the owner logs why. It never calls MLflow, only imports it.
The libraries it preloads are kept single-threaded until the fork:

- numpy/OpenBLAS: OpenBLAS starts its thread pool when the library loads (measured here:
  importing numpy adds a thread, scipy's own OpenBLAS another). The template sets
  ``OPENBLAS_NUM_THREADS=1`` before importing anything, so no BLAS thread exists before the
  fork; in the child, once the job's environment is applied, the BLAS pool is resized to what
  that environment asks (``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS``,
  else the usable cores, OpenBLAS's own default), which starts its threads after the fork.
- xgboost and scikit-learn/OpenMP: libgomp is not fork-safe once its thread pool started,
  and it starts that pool at the first parallel region, not at load. The template never runs
  model code, so no OpenMP region ran before a fork (the thread check would see its threads).
  ``OMP_NUM_THREADS`` is left alone: libgomp reads it at load, and the child must keep the
  usual default.
- pyarrow (imported by pandas) starts a jemalloc background thread at load; the template sets
  ``JE_ARROW_MALLOC_CONF=background_thread:false`` first (the child's jemalloc then purges
  inline; pyarrow allocates through mimalloc by default anyway).
- matplotlib: the backend is chosen at first use, not at import. The template sets
  ``MPLBACKEND`` to the inline backend before importing matplotlib (what ipykernel sets in
  every kernel) and never imports a backend module; the child sets the job's backend
  (``MPLBACKEND`` from its environment, else inline) before its kernel starts, so the inline
  backend hooks into that kernel's shell when the first figure is drawn (tested: a figure
  shows as image/png).

Also handled: ``random`` reseeds itself after a fork and numpy's global generator is reseeded
in the child (else every job would draw the same numbers); ``sys.argv`` and ``sys.path`` are
the ones ``ipykernel_launcher`` gives; a job whose working directory holds a module that
shadows a preloaded one (``pandas.py`` next to the notebook) or a ``matplotlibrc``, or whose
``PYTHON*``/``MPLCONFIGDIR`` variables differ from the template's, is refused (a fresh kernel
would see something else). The imported objects are frozen out of the collector's reach
(``gc.freeze``) so a kernel's collections neither walk nor copy the shared pages, and a kernel
exits without the module teardown that would copy them all (``_exit_quickly``). Warnings a
library raises while it is imported are not shown again in a forked kernel.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import sys

from workbench.core import processes
from workbench.run.kernel_child import INLINE_BACKEND, become_kernel

# What a kernel imports while it starts (its debugger pulls in debugpy), and the runner's
# hand-over hook every job imports before its first cell: imported first, so a forked kernel
# starts without importing anything.
KERNEL_MODULES = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.debugger",
    "IPython.core.completerlib",
    "IPython.extensions.storemagic",
    "tornado.queues",
    "tornado.platform.asyncio",
    "pdb",
    "encodings.ascii",
    "encodings.latin_1",
    # what it imports while it reads its connection file and runs its first cell
    "psutil",
    "jupyter_client.localinterfaces",
    "IPython.core.oinspect",
    "IPython.core.logger",
    "IPython.utils.wildcard",
    "faulthandler",
    "resource",
    "workbench.tracking.handover",
)
# The usual heavy modules, for a template that does not know its notebooks in advance (a Dask
# worker's): imported while it waits for jobs, between forks. A batch's template imports
# what the batch's notebooks import instead (``workbench.run.kernels.batch_imports``).
USUAL_MODULES = (
    "numpy",
    "pandas",
    "sklearn",
    "sklearn.base",
    "sklearn.model_selection",
    "matplotlib",
    "matplotlib.pyplot",
    "mlflow",
    "mlflow.sklearn",
    "workbench.tracking",
)
# What a library imports at its first call rather than at its import: preloaded as soon as
# the library itself is (MLflow's SQL store alone takes 1-2 s at a notebook's first log call).
FIRST_CALL_MODULES = {
    "mlflow": (
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
        "mlflow.store.tracking.sqlalchemy_workspace_store",
        "mlflow.tracing.processor.otel",
        "mlflow.tracing.export",
        "sqlalchemy.dialects.sqlite",
        "git",
        "filelock",
    ),
    "matplotlib": ("matplotlib.pyplot",),
}
USUAL_ARG = "--usual"  # argument: import USUAL_MODULES while idle
CHANNEL_ARG = "--channel="  # argument: a socket descriptor another owner talks through
OWNER_ENV = "WORKBENCH_TEMPLATE_OWNER"  # the pid the template dies with
KERNEL_ARG = "ipykernel_launcher"  # first argument: what the children become
# Set in the template only (the child applies the job's own environment).
TEMPLATE_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}


def send_line(fd: int, message: dict) -> None:
    """Write ``message`` as one JSON line to ``fd`` (the protocol both sides speak)."""
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


class Channel:
    """One owner's connection: its requests in; replies and its kernels' exits out.

    The first is the process that started the template (stdin/stdout): when it closes, the
    template stops every kernel and exits. The others are sockets of the batch workers that
    share the template: when one closes (its worker exited or was killed), the kernels forked
    for it are killed, as a kernel dies with the worker that started it.
    """

    def __init__(self, fd_in: int, fd_out: int, owner: bool) -> None:
        self.fd_in, self.fd_out, self.owner = fd_in, fd_out, owner
        self.buffer = b""
        self.open = True

    def send(self, message: dict) -> None:
        """Send, unless the other side is gone (the owner's channel: raise)."""
        if not self.open:
            return
        try:
            send_line(self.fd_out, message)
        except OSError:
            if self.owner:
                raise BrokenPipeError("the template's owner is gone") from None
            self.open = False

    def lines(self) -> list[bytes] | None:
        """The complete lines now readable; None when the other side closed."""
        try:
            chunk = os.read(self.fd_in, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.open = False
            return None
        self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        return done

    def fds(self) -> set[int]:
        return {self.fd_in, self.fd_out}


class Server:
    """The template's loop: import, answer requests, fork, reap."""

    def __init__(self, modules: list[list], usual: bool = False, shared: tuple = ()) -> None:
        # The owner's pipes and stderr move to fresh descriptors and 0-2 go to /dev/null: a
        # library that prints while it is imported can neither corrupt the protocol nor
        # reach the owner's terminal. Kernels get the owner's stderr back (or their files).
        self.ctl_in, self.ctl_out, self.err = os.dup(0), os.dup(1), os.dup(2)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        # Imports still to do: [module, from-names, needed]. A fork waits for the needed ones
        # (the kernel's, the notebooks', and what those load at first call); the usual ones
        # are imported while no request waits.
        self.pending: list[list] = [[m, [], True] for m in KERNEL_MODULES]
        self.pending += [[m, list(names), True] for m, names in modules]
        self.pending += [[m, [], False] for m in USUAL_MODULES] if usual else []
        self.expanded: set[str] = set()  # libraries whose FIRST_CALL_MODULES are queued
        self.channels = [Channel(self.ctl_in, self.ctl_out, owner=True)]
        self.channels += [Channel(fd, fd, owner=False) for fd in shared]
        self.children: dict[int, Channel] = {}  # kernel pid -> the channel it was forked for
        self.fresh_tops: set[str] = set()  # top-level modules a fresh kernel would not have
        self.baseline: set[str] | None = None
        self.env_at_start = dict(os.environ)

    # -------------------------------------------------------------- imports

    def import_next(self) -> None:
        name, names, needed = self.pending.pop(0)
        _import(name, names)
        if self.baseline is None and name == KERNEL_MODULES[-1]:
            self.baseline = _tops()
        if self.baseline is not None:
            self.fresh_tops = _tops() - self.baseline
        for library, extra in FIRST_CALL_MODULES.items():
            if library in sys.modules and library not in self.expanded:
                self.expanded.add(library)
                self.pending[0:0] = [[m, [], needed] for m in extra]

    def preload(self, modules: list[list]) -> None:
        """Import ``modules`` now (the kernel's own first, if still pending), and what they
        load at first call."""
        while self.pending and self.pending[0][0] in KERNEL_MODULES:
            self.import_next()
        self.pending[0:0] = [[m, list(names), True] for m, names in modules]
        self.import_needed()

    def import_needed(self) -> None:
        """Every import a job waits for (the usual ones stay pending)."""
        while any(needed for _, _, needed in self.pending):
            self.pending.sort(key=lambda item: not item[2])  # stable: needed ones first
            self.import_next()

    # -------------------------------------------------------------- serving

    def serve(self) -> dict | None:
        """Serve until stdin closes (None) or, in a forked child, return its request."""
        try:
            return self._loop()
        except BrokenPipeError:  # the owner is gone
            self.stop_children()
            return None

    def _loop(self) -> dict | None:
        while True:
            self.reap()
            wait = 0.0 if self.pending else None
            listening = [c.fd_in for c in self.channels if c.open]
            ready, _, _ = select.select([*listening, self.wake_r], [], [], wait)
            if self.wake_r in ready:
                _drain(self.wake_r)
            for channel in [c for c in self.channels if c.fd_in in ready]:
                lines = channel.lines()
                if lines is None:  # that owner is gone: so are the kernels it left
                    if channel.owner:
                        self.stop_children()
                        return None
                    self.stop_children(channel)
                    continue
                for line in lines:
                    child = self.handle(json.loads(line), channel)
                    if child is not None:
                        return child
            if not ready and self.pending:
                self.import_next()

    def handle(self, req: dict, channel: Channel) -> dict | None:
        """Answer one request; in a forked child, return the request."""
        self.preload(req.get("modules", []))  # and every needed import before a fork
        if req.get("op") == "preload":
            return None
        if req.get("op") == "sync":  # answered once every pending import is done
            while self.pending:
                self.import_next()
            channel.send({"id": req["id"], "modules": len(sys.modules)})
            return None
        why = self.refusal(req)
        if why is not None:
            channel.send({"id": req["id"], "refused": why})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        template = os.getpid()
        # What the template imported lives as long as every kernel: out of the collector's
        # reach, so a collection in a kernel neither walks it nor copies its pages.
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            processes.die_with_parent(template, signal.SIGKILL)
            self.leave(req)
            return req
        self.children[pid] = channel
        channel.send({"id": req["id"], "pid": pid})
        return None

    def reap(self) -> None:
        """Report every child that ended since the last look."""
        for pid, channel in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.children[pid]
                channel.send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def stop_children(self, channel: Channel | None = None) -> None:
        """An owner is gone: so are the kernels it left running (every one, for None)."""
        for pid, owner in self.children.items():
            if channel is None or owner is channel:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)

    def leave(self, req: dict) -> None:
        """In the child: the job's output files, then drop the template's pipes and handlers."""
        gc.enable()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, path in ((1, req.get("stdout")), (2, req.get("stderr"))):
            target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None
            os.dup2(self.err if target is None else target, fd)
            if target is not None:
                os.close(target)
        for fd in {self.err, self.wake_r, self.wake_w}.union(*(c.fds() for c in self.channels)):
            os.close(fd)

    # -------------------------------------------------------------- safety

    def refusal(self, req: dict) -> str | None:
        """Why this job must not be forked from here, or None when it may."""
        return (
            _threads()
            or _open_files(
                {0, 1, 2, self.err, self.wake_r, self.wake_w}.union(*self._channel_fds())
            )
            or self.env_differs(req["env"])
            or self.shadowed(req["cwd"])
        )

    def _channel_fds(self) -> list[set[int]]:
        return [c.fds() for c in self.channels]

    def env_differs(self, env: dict[str, str]) -> str | None:
        """Variables read once at start-up or import must be the template's."""
        keys = {k for k in (*env, *self.env_at_start) if k.startswith("PYTHON")}
        keys.add("MPLCONFIGDIR")
        differ = sorted(k for k in keys if env.get(k) != self.env_at_start.get(k))
        return f"the job's {', '.join(differ)} differ from the template's" if differ else None

    def shadowed(self, cwd: str) -> str | None:
        """A file in the job's directory that a fresh kernel would import instead."""
        try:
            entries = os.listdir(cwd)
        except OSError as exc:
            return f"cannot list the working directory: {exc}"
        if "matplotlibrc" in entries and "matplotlib" in sys.modules:
            return f"{cwd} has a matplotlibrc"
        local = {e.split(".", 1)[0] for e in entries if e.endswith((".py", ".so"))}
        local |= {e for e in entries if os.path.isdir(os.path.join(cwd, e))}
        hit = sorted(local & self.fresh_tops)
        return f"{cwd} holds module(s) {', '.join(hit)} that shadow preloaded ones" if hit else None


def _import(name: str, names: list[str]) -> None:
    """Import a module (and ``from`` names that are submodules); failures are the notebook's
    to report, warnings are not shown."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that fails here fails in the notebook
            return
        for attr in names:
            if not hasattr(module, attr):
                with contextlib.suppress(BaseException):
                    importlib.import_module(f"{name}.{attr}")


def _tops() -> set[str]:
    return {name.split(".", 1)[0] for name in list(sys.modules)}


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _threads() -> str | None:
    """None when this process runs exactly one thread (Python's count and the kernel's)."""
    import threading

    tasks = os.listdir("/proc/self/task")
    if threading.active_count() == 1 and len(tasks) == 1:
        return None
    names = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return f"the template runs {len(tasks)} threads ({', '.join(sorted(names))})"


def _open_files(allowed: set[int]) -> str | None:
    """None when every open descriptor is one of ``allowed`` (no socket, no store file)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) in allowed:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor of the listing itself, already closed
        found.append(f"{fd} -> {target}")
    return f"the template holds open descriptors: {', '.join(found)}" if found else None


def main(argv: list[str]) -> int:
    """Prepare, import, serve; in a forked child, run the job's kernel."""
    owner = os.environ.pop(OWNER_ENV, "")
    if owner:
        processes.die_with_parent(int(owner), signal.SIGKILL)
    for key, value in TEMPLATE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.realpath(os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does: nothing from the template's directory
    gc.disable()  # imports only: the collector would just slow them down
    shared = [int(a[len(CHANNEL_ARG) :]) for a in argv if a.startswith(CHANNEL_ARG)]
    flags = (KERNEL_ARG, USUAL_ARG)
    modules = [json.loads(a) for a in argv if a not in flags and not a.startswith(CHANNEL_ARG)]
    server = Server(modules, usual=USUAL_ARG in argv, shared=tuple(shared))
    try:
        req = server.serve()
    except Exception:  # the owner sees the pipe close and starts fresh kernels instead
        import traceback

        os.write(server.err, f"workbench template failed:\n{traceback.format_exc()}".encode())
        return 1
    if req is None:
        return 0
    return become_kernel(req)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
