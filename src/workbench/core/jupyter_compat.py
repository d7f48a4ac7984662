"""Every use of jupyter_client's private names, fenced in one place (tests/test_compat.py
guards them)."""

from __future__ import annotations

from functools import cache

# How often a shut-down kernel is polled for its exit (jupyter_client's default: 0.1 s).
EXIT_POLL_S = 0.01


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

    class FastExitKernelManager(AsyncKernelManager):
        async def _async_wait(self, pollinterval: float = 0.1) -> None:
            await super()._async_wait(pollinterval=min(pollinterval, EXIT_POLL_S))

    return FastExitKernelManager
