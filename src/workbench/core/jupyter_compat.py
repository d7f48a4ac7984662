"""Every use of jupyter_client's private names, fenced in one place (tests/test_compat.py
guards them)."""

from __future__ import annotations

from functools import cache

# How often a shut-down kernel is polled for its exit (jupyter_client's default: 0.1 s).
EXIT_POLL_S = 0.01
# How long a new kernel's IOPub channel may stay silent before it counts as connected
# (jupyter_client waits this long after kernel_info once, then as much again to flush).
IOPUB_CHECK_S = 0.2
# How soon a kernel's socket connects again after the kernel refused it (ZMQ: 100 ms).
RECONNECT_MS = 10


def _reconnecting(context):
    """``context`` with its sockets' reconnect interval at ``RECONNECT_MS``.

    jupyter_client connects its sockets right after it launched the kernel, before the
    kernel bound its ports (~70 ms later); each refused connection is tried again after
    ZMQ's reconnect interval, 100 ms by default: kernel_info, and the shutdown request of a
    short notebook, would wait that long.
    """
    import zmq

    context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    return context


@cache
def fast_exit_kernel_manager() -> type:
    """An ``AsyncKernelManager`` that notices its kernel's exit within 10 ms, not 100 ms.

    After asking a kernel to shut down, jupyter_client's ``finish_shutdown`` polls the
    process through the private ``AsyncKernelManager._async_wait(pollinterval=0.1)``: a tenth
    of a second lost per execution. The subclass caps the interval (polling faster costs
    nothing while it lasts); shutdown behaves the same otherwise. If jupyter_client renames
    ``_async_wait`` the override is never called and every run is 0.1 s slower; if it
    changes its signature, shutdown raises. Built on first use (no import at import time).
    """
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class FastExitKernelManager(AsyncKernelManager):
        async def _async_wait(self, pollinterval: float = 0.1) -> None:
            await super()._async_wait(pollinterval=min(pollinterval, EXIT_POLL_S))

        @default("client_factory")
        def _fast_ready_client(self) -> type:
            return fast_ready_client()

        @default("context")
        def _fast_reconnect_context(self):
            return _reconnecting(super()._context_default())

    return FastExitKernelManager


@cache
def fast_ready_client() -> type:
    """An ``AsyncKernelClient`` whose ``wait_for_ready`` does not sit 0.2 s idle at the end.

    jupyter_client's version sends kernel_info until the reply comes and one IOPub message
    shows the channel connected, as here, and then waits until IOPub has been silent for
    0.2 s to "flush" it: a fifth of a second lost per kernel start. Here the flush takes what
    IOPub already holds and returns (a late status message is harmless: nbclient and the
    runner read only the messages whose parent is their own request). Uses the private
    ``_handle_kernel_info_reply`` (protocol version adaptation), as the original does.
    """
    import time
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient
    from traitlets import default

    class FastReadyClient(AsyncKernelClient):
        @default("context")
        def _fast_reconnect_context(self):
            return _reconnecting(super()._context_default())

        async def wait_for_ready(self, timeout: float | None = None) -> None:
            deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
            while True:
                self.kernel_info()
                try:
                    msg = await self.shell_channel.get_msg(timeout=1)
                except Empty:
                    msg = None
                if msg is not None and msg["msg_type"] == "kernel_info_reply":
                    try:  # IOPub is connected once a message comes through it
                        await self.iopub_channel.get_msg(timeout=IOPUB_CHECK_S)
                    except Empty:
                        pass
                    else:
                        self._handle_kernel_info_reply(msg)
                        break
                if not await self.is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
            while True:  # what IOPub holds already: taken, not waited for
                try:
                    await self.iopub_channel.get_msg(timeout=0)
                except Empty:
                    break

    return FastReadyClient
