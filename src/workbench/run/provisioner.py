"""A jupyter_client kernel provisioner whose kernels are forked by a template process.

``ForkProvisioner`` is jupyter_client's ``LocalProvisioner`` (it writes the connection file
and builds the command the same way) except at launch: when the command is this
environment's ``python -m ipykernel_launcher`` it asks the template
(``workbench.run.kernels.Template``) to fork the kernel instead of starting a process. The
kernel is then the template's child, not ours, so the process calls go through the template:
``poll``/``wait`` read the exit code the template reports when it reaps the child (the
kernel's true status: ``-9`` for a SIGKILL), ``send_signal``/``kill``/``terminate`` signal the
kernel's own process group (it called ``setsid``) only while no exit was reported, so a
reaped pid that the system gave to another process is never signalled. When the template
refuses (see ``workbench.run.template``) the provisioner starts the kernel as
``LocalProvisioner`` does, and logs why once per reason.

No entry point is needed: the kernel manager from ``forked_kernel_manager`` installs the
provisioner itself before ``start_kernel`` when the notebook's kernelspec is this
environment's ``python3`` (any other name or language, or a kernelspec that names its own
provisioner, starts as usual). Classes are built on first use (no jupyter_client import at
import time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import uuid
from functools import cache
from typing import Any

from workbench.core import jupyter_compat

log = logging.getLogger("workbench.run.kernels")

# Start options a fork can honour; any other (stdin, start_new_session...) means a normal
# start. ``preexec_fn`` is not run: the only one the workbench passes is the engine's "die
# with the process that started it", which a forked kernel already does (it dies with the
# template, which dies with its owner: see ``workbench.run.template``).
_FORK_OPTIONS = {
    *("env", "cwd", "stdout", "stderr", "kernel_id", "extra_arguments", "independent"),
    "preexec_fn",
}


class TemplateRefused(RuntimeError):
    """The template would not (or could not) fork this job: start a normal kernel."""


def forkable_spec(kernel_name: str, spec: Any) -> bool:
    """True for this environment's ``python3`` kernelspec (no provisioner of its own)."""
    if kernel_name != "python3" or spec is None:
        return False
    if "kernel_provisioner" in (getattr(spec, "metadata", None) or {}):
        return False
    return str(getattr(spec, "language", "")).lower() == "python"


def launch_refusal(cmd: list[str], options: dict[str, Any]) -> str | None:
    """Why a kernel command cannot be forked from the template, or None."""
    if len(cmd) < 3 or cmd[1:3] != ["-m", "ipykernel_launcher"]:
        return f"the kernel command is not ipykernel_launcher: {cmd[:3]}"
    if os.path.realpath(cmd[0]) != os.path.realpath(sys.executable):
        return f"the kernel runs another Python: {cmd[0]}"
    unknown = sorted(set(options) - _FORK_OPTIONS)
    if unknown:
        return f"start option(s) a fork cannot honour: {', '.join(unknown)}"
    for stream in ("stdout", "stderr"):
        target = options.get(stream)
        if target is not None and not isinstance(getattr(target, "name", None), str):
            return f"the kernel's {stream} is not a file"
    return None


def _file_name(target: Any) -> str | None:
    return None if target is None else os.path.abspath(target.name)


def _note(template: Any, why: str) -> None:
    if why not in template.warned:
        template.warned.add(why)
        log.warning("workbench: a fresh kernel instead of a forked one: %s", why)


@cache
def fork_provisioner_class() -> type:
    """``ForkProvisioner``: ``LocalProvisioner``, launching through the template."""
    from jupyter_client.provisioning import LocalProvisioner

    class ForkProvisioner(LocalProvisioner):
        template: Any = None  # the kernels.Template to fork from (set after creation)
        forked: int | None = None  # the forked kernel's pid while we manage it

        @property
        def has_process(self) -> bool:
            return self.forked is not None or self.process is not None

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            why = launch_refusal(cmd, kwargs)
            if why is None:
                cwd = str(kwargs.get("cwd") or os.getcwd())
                try:
                    pid = self.template.fork(
                        cmd[3:],
                        cwd,
                        dict(kwargs["env"]),
                        stdout=_file_name(kwargs.get("stdout")),
                        stderr=_file_name(kwargs.get("stderr")),
                    )
                except TemplateRefused as exc:
                    why = str(exc)
                else:
                    self.forked = self.pid = self.pgid = pid
                    self.cwd = cwd
                    return self.connection_info
            _note(self.template, why)
            return await super().launch_kernel(cmd, **kwargs)

        async def poll(self) -> int | None:
            if self.forked is None:
                return await super().poll()
            return self.template.exit_code(self.forked)

        async def wait(self) -> int | None:
            if self.forked is None:
                return await super().wait()
            while (code := await self.poll()) is None:
                await asyncio.sleep(jupyter_compat.EXIT_POLL_S)
            self.template.forget(self.forked)
            self.forked = None
            return code

        async def send_signal(self, signum: int) -> None:
            if self.forked is None:
                return await super().send_signal(signum)
            if await self.poll() is not None:
                return  # reaped: its pid may name another process by now
            try:
                os.killpg(self.forked, signum)
            except ProcessLookupError:  # not yet its own group leader: the process itself
                os.kill(self.forked, signum)
            return None

        async def kill(self, restart: bool = False) -> None:
            if self.forked is None:
                return await super().kill(restart=restart)
            return await self.send_signal(signal.SIGKILL)

        async def terminate(self, restart: bool = False) -> None:
            if self.forked is None:
                return await super().terminate(restart=restart)
            return await self.send_signal(signal.SIGTERM)

    return ForkProvisioner


def forked_kernel_manager(template: Any) -> type:
    """An ``AsyncKernelManager`` (jupyter_compat's fast-exit one) whose python3 kernels are
    forked from ``template``."""
    base = jupyter_compat.fast_exit_kernel_manager()
    provisioner_class = fork_provisioner_class()

    class ForkedKernelManager(base):
        async def start_kernel(self, **kw: Any) -> None:
            if self.provisioner is None and forkable_spec(self.kernel_name, self.kernel_spec):
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
                self.provisioner = provisioner_class(
                    kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self
                )
                self.provisioner.template = template
            await super().start_kernel(**kw)

    return ForkedKernelManager
