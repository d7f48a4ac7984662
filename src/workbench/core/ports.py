"""Loopback ports and HTTP readiness: what the servers workbench starts have in common.

``free_port`` picks a port for a server about to start, ``port_free`` checks one a user chose,
and ``wait_http`` polls a URL until the process behind it answers, exits, or runs out of time.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for servers, tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def answers(url: str, *, timeout: float = 3.0, headers: dict[str, str] | None = None) -> bool:
    """True when a GET of ``url`` answers 200; False when it fails in any way."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_http(
    url: str,
    *,
    timeout: float,
    proc: subprocess.Popen | None = None,
    every: float = 0.5,
    headers: dict[str, str] | None = None,
) -> bool:
    """Poll ``url`` until it answers 200 (True). False as soon as ``proc`` exits or after
    ``timeout`` seconds; the caller tells the two apart with ``proc.poll()``."""
    deadline = time.monotonic() + timeout
    while not answers(url, timeout=2.0, headers=headers):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
