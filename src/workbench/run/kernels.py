"""Pre-imported kernels for batches: one template process per batch, forked per job.

A fresh kernel pays its imports (ipykernel, mlflow, pandas, scikit-learn, matplotlib: ~4 s
here) before its first cell runs. A batch instead starts one ``Template`` (the process in
``workbench.run.template``, which imports what the batch's notebooks import, once) and, for
each job, its worker asks it to fork: the child becomes the job's kernel, ready in about 30
ms. The template reaps its children and reports their exit codes to the worker that asked
for them (each worker has its own channel: ``Template.attach_shared``), so the kernel
manager polls, waits for and signals a process that is the template's child, not its own
(``workbench.run.provisioner``). A Dask worker, or a batch worker started to replace a dead
one, starts a template of its own.

``start_template`` makes a template the one this process uses; ``kernel_manager_class`` is
what the papermill engine hands to nbclient: the forking kernel manager while a template is
in use (it also asks the template to import the notebook's own imports), the usual one
otherwise. A template that refuses a job (see ``workbench.run.template``), or a notebook
whose kernel is not this environment's Python, gets a normal kernel start.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from workbench.core import jupyter_compat, processes
from workbench.run import provisioner
from workbench.run.provisioner import TemplateRefused
from workbench.run.template import CHANNEL_ARG, KERNEL_ARG, OWNER_ENV, USUAL_ARG, send_line

# How long a fork may wait for the template's answer (its first imports included).
FORK_TIMEOUT_S = 120.0


class Template:
    """The owner's side of a template process: fork requests and its children's exits.

    ``channels``: how many other processes (a batch's workers) will share this template,
    each through its own socket (``attach_shared`` in the worker), so one template's
    imports serve them all.
    """

    def __init__(
        self, modules: list[list] | tuple = (), usual: bool = True, channels: int = 0
    ) -> None:
        import socket

        pairs = [socket.socketpair() for _ in range(channels)]
        theirs = [b.fileno() for _, b in pairs]
        flags = [USUAL_ARG] if usual else []
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [
                *(sys.executable, "-m", "workbench.run.template", KERNEL_ARG),
                *flags,
                *(f"{CHANNEL_ARG}{fd}" for fd in theirs),
                *map(json.dumps, modules),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            pass_fds=theirs,
            env={**os.environ, OWNER_ENV: str(os.getpid())},
            # out of the owner's process group, as kernels are: a signal to the group (a
            # terminal's Ctrl-C or hang-up, a CI cancel) is the owner's to handle; the
            # template goes when its owner closes its stdin or dies
            start_new_session=True,
        )
        for _, b in pairs:
            b.close()
        self.shared = [a for a, _ in pairs]  # the sharers' ends, until each is handed over
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._pid, self._wfd = self.proc.pid, self.proc.stdin.fileno()
        self._fd = self.proc.stdout.fileno()
        self._init_state()

    def _init_state(self) -> None:
        self._buffer = b""
        self._replies: dict[int, dict] = {}
        self._exits: dict[int, int] = {}
        self._ticks: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.gone = False
        self.warned: set[str] = set()

    @classmethod
    def attach_shared(cls, owner: Template, index: int) -> Template:
        """In a process forked after ``owner`` started: this process's side of the template
        through channel ``index``. The descriptors this process inherited for the owner's
        pipes and the other channels are closed (each owner's end must have one holder, so
        that its death closes it)."""
        for i, sock in enumerate(owner.shared):
            if i != index:
                sock.close()
        assert owner.proc is not None
        for stream in (owner.proc.stdin, owner.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()  # type: ignore[union-attr]
        sock = owner.shared[index]
        self = cls.__new__(cls)
        self.proc, self.shared, self._sock = None, [], sock
        self._pid, self._wfd, self._fd = owner.pid, sock.fileno(), sock.fileno()
        self._init_state()
        return self

    def hand_over(self, index: int) -> None:
        """In the owner, once channel ``index`` went to the process that uses it: drop our
        copy (the template then sees that process's exit as the channel's end)."""
        self.shared[index].close()

    @property
    def pid(self) -> int:
        return self._pid

    def _send(self, message: dict) -> None:
        try:
            send_line(self._wfd, message)
        except (OSError, ValueError):  # the template is gone
            self.gone = True

    def _pump(self, timeout: float) -> None:
        """Read what the template said (waiting up to ``timeout`` s for something)."""
        if self.gone:
            return
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.gone = True
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            msg = json.loads(line)
            if "exit" in msg:
                self._exits[msg["exit"]] = msg["code"]
            else:
                self._replies[msg["id"]] = msg

    def preload(self, modules: list[list]) -> None:
        """Have the template import ``modules`` (before the next fork; no answer)."""
        if modules:
            with self._lock:
                self._send({"op": "preload", "id": next(self._ids), "modules": modules})

    def wait_ready(self, timeout: float = FORK_TIMEOUT_S) -> int:
        """Wait until the template imported everything it was given; its module count."""
        with self._lock:
            return int(self._request({"op": "sync"}, timeout).get("modules", 0))

    def _request(self, message: dict, timeout: float) -> dict:
        """Send a request and wait for its answer (a template that does not answer in
        ``timeout`` s is closed); ``{"refused": ...}`` when the template is gone."""
        if self.gone:
            return {"refused": "the template process is gone"}
        rid = next(self._ids)
        self._send({**message, "id": rid})
        deadline = time.monotonic() + timeout
        while rid not in self._replies and not self.gone:
            if time.monotonic() > deadline:
                self.close(timeout=0)
                return {"refused": f"the template did not answer in {timeout:g} s"}
            self._pump(0.5)
        return self._replies.pop(rid, {"refused": "the template process is gone"})

    def fork(self, argv: list[str], cwd: str, env: dict[str, str], **files: str | None) -> int:
        """A new kernel process: ``ipykernel_launcher`` ``argv`` in ``cwd`` with ``env`` (and
        ``stdout``/``stderr`` appended to the files named); its pid. TemplateRefused when
        the template will not fork it or is gone."""
        request = {"op": "fork", "argv": argv, "cwd": cwd, "env": env, **files}
        with self._lock:
            reply = self._request(request, FORK_TIMEOUT_S)
        if "refused" in reply:
            raise TemplateRefused(reply["refused"])
        pid = int(reply["pid"])
        self._ticks[pid] = processes.start_ticks(pid)
        return pid

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a forked kernel, None while it runs."""
        with self._lock:
            self._pump(0)
            if pid in self._exits:
                return self._exits[pid]
            if self.gone:  # nobody reaps it now; it exits when it sees its parent gone
                return None if processes.alive(pid, self._ticks.get(pid, "")) else 1
            return None

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)
        self._ticks.pop(pid, None)

    def close(self, timeout: float = 10.0) -> None:
        """Close the template's stdin (it exits, killing any kernel left) and reap it; for
        a shared template, close this process's channel (its kernels are killed)."""
        self.gone = True
        if self.proc is None:
            with contextlib.suppress(OSError):
                self._sock.close()
            return
        for sock in self.shared:
            sock.close()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ------------------------------------------------------------------ this process's template

_active: Template | None = None


def start_template(modules: list[list] | tuple | None = None) -> Template | None:
    """Start a template and make it the one this process's kernels are forked from (Linux
    only: elsewhere None, and kernels start as usual). ``modules``: what its notebooks
    import (``batch_imports``); None when they are not known yet, and the template imports
    the usual heavy modules while it waits. Start it from the thread that lives as long as
    the process (the template dies with the thread that started it)."""
    global _active
    close_template()
    if sys.platform == "linux":
        _active = Template(modules or (), usual=modules is None)
    return _active


def use_shared_template(owner: Template, index: int) -> Template:
    """In a batch worker forked after ``owner`` (the batch's template) started: fork this
    process's kernels from it, through its channel ``index``."""
    global _active
    _active = Template.attach_shared(owner, index)
    return _active


def active_template() -> Template | None:
    return _active if _active is not None and not _active.gone else None


def close_template() -> None:
    """Close this process's template, if any."""
    global _active
    if _active is not None:
        _active.close()
        _active = None


def kernel_manager_class(nb: Any = None) -> type:
    """The kernel manager for the next execution: forked from this process's template when
    there is one (the template is told ``nb``'s imports first), the usual one otherwise."""
    template = active_template()
    if template is None:
        return jupyter_compat.fast_exit_kernel_manager()
    if nb is not None:
        template.preload(notebook_imports(nb))
    return provisioner.forked_kernel_manager(template)


# ------------------------------------------------------------------ a notebook's imports


def batch_imports(notebooks: Any) -> list[list]:
    """What the notebooks at these paths import (``notebook_imports``, merged in order); a
    notebook that cannot be read adds nothing (its job reports the problem)."""
    import nbformat

    merged: dict[str, list[str]] = {}
    for path in dict.fromkeys(map(str, notebooks)):
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception:  # noqa: BLE001 - the job itself says what is wrong with it
            continue
        for module, names in notebook_imports(nb):
            known = merged.setdefault(module, [])
            known += [n for n in names if n not in known]
    return [[module, names] for module, names in merged.items()]


def notebook_imports(nb: Any) -> list[list]:
    """``[module, [names]]`` for each top-level ``import``/``from ... import`` of the
    notebook's code cells, in order (IPython magics and shell lines skipped; a cell that is
    not Python is skipped)."""
    found: dict[str, list[str]] = {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if source.lstrip().startswith("%%"):
            continue
        lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()]
        try:
            tree = ast.parse("\n".join(lines))
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, [])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = found.setdefault(node.module, [])
                names += [a.name for a in node.names if a.name != "*" and a.name not in names]
    return [[module, names] for module, names in found.items()]
