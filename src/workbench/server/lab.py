"""``workbench lab``: JupyterLab in ``notebooks/`` and the MLflow UI, together, on loopback.

What an instructor runs at the start of a session: one command, two URLs, one Ctrl-C. Both
servers bind to 127.0.0.1, and only to a loopback address: neither the MLflow UI nor a
JupyterLab (which runs any code) goes on the network from here. Both die with the command,
however it ends (Ctrl-C, SIGTERM, SIGHUP, or killed outright: ``server.guard``). Jupyter
requires a token, taken from ``$JUPYTER_TOKEN`` or generated fresh, and passed through the
environment so it never shows in the process list. Kernels get ``WORKBENCH_UI_URL`` so run
links printed in notebooks point at this UI. When the configured store is a tracking server,
its own UI is used instead.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench import server
from workbench.core import ports
from workbench.core.config import Settings, get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
START_TIMEOUT_S = 180.0


def jupyter_command(host: str, port: int, root: Path) -> list[str]:
    """JupyterLab without a browser, on exactly ``port`` (no silent move to another one).

    As root (containers, CI) Jupyter refuses to start without ``--allow-root``."""
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        f"--ServerApp.ip={host}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


def _wait_jupyter(proc: subprocess.Popen, url: str, token: str, log: Path) -> None:
    headers = {"Authorization": f"token {token}"}
    if ports.wait_http(f"{url}/api/status", proc=proc, timeout=START_TIMEOUT_S, headers=headers):
        return
    if proc.poll() is not None:
        raise server.ServerError(
            f"JupyterLab exited with code {proc.returncode}.\nlog ({log}):\n{server.log_tail(log)}"
        )
    raise server.ServerError(
        f"JupyterLab did not answer {url} within {START_TIMEOUT_S:.0f} s; log: {log}"
    )


@dataclass(frozen=True)
class _Lab:
    """Where the two servers listen and log, and the token Jupyter asks for."""

    host: str
    port: int
    ui_port: int
    root: Path
    token: str
    lab_url: str
    ui_url: str
    lab_log: Path
    ui_log: Path


def main(*, port: int = 8888, ui_port: int = 5000, host: str = "127.0.0.1") -> int:
    """Start both, print both URLs, stop both on Ctrl-C, SIGTERM or SIGHUP (or when one
    exits). A non-loopback ``host`` is refused (exit 2) before anything starts."""
    settings = get_settings()
    problem = _host_problem(host) or _port_problem(host, port, ui_port)
    if problem is not None:
        print(f"workbench lab: {problem}", file=sys.stderr)
        return EXIT_USAGE
    lab = _plan(settings, host, port, ui_port)
    procs: dict[str, subprocess.Popen] = {}
    with server.interrupt_on_signals():
        try:
            _start(lab, settings, procs)
            _announce(lab, settings)
            return _watch(procs)
        except server.ServerError as exc:
            print(f"workbench lab: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, server.UsageProblem) else EXIT_FAILED
        except KeyboardInterrupt:
            print("stopping JupyterLab and the MLflow UI", flush=True)
            return EXIT_OK
        finally:
            for proc in procs.values():
                server.stop_group(proc.pid)


def _plan(settings: Settings, host: str, port: int, ui_port: int) -> _Lab:
    """Jupyter's root (``notebooks/``, else the project), token, URLs and log files.

    With a tracking server as the store, its own UI is the one linked to.
    """
    root = settings.project_dir / "notebooks"
    if not root.is_dir():
        root = settings.project_dir
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    logs = server.state_dir()
    ui_url = (
        server.mask_uri(settings.tracking_uri.rstrip("/"))
        if settings.is_remote
        else server.client_url(host, ui_port)
    )
    return _Lab(
        host=host,
        port=port,
        ui_port=ui_port,
        root=root,
        token=token,
        lab_url=server.client_url(host, port),
        ui_url=ui_url,
        lab_log=logs / f"lab-{port}.log",
        ui_log=logs / f"ui-{ui_port}.log",
    )


def _host_problem(host: str) -> str | None:
    """Why ``host`` may not be used (not loopback: the UI has no auth, Jupyter runs code)."""
    try:
        server.require_loopback(host, "JupyterLab and the MLflow UI")
    except server.UsageProblem as exc:
        return str(exc)
    return None


def _port_problem(host: str, port: int, ui_port: int) -> str | None:
    """Why the two ports cannot be used (taken, or the same one), or None."""
    for p, what in ((port, "--port"), (ui_port, "--ui-port")):
        if not ports.port_free(host, p):
            return f"port {p} on {host} is already in use; choose another with {what}"
    if port == ui_port:
        return "--port and --ui-port must differ"
    return None


def _start(lab: _Lab, settings: Settings, procs: dict[str, subprocess.Popen]) -> None:
    """Start the MLflow UI (unless the store is a server) and JupyterLab, into ``procs`` as
    they start (so the caller stops whatever did), then wait until both answer."""
    if not settings.is_remote:
        procs["MLflow UI"] = server.start_ui(lab.host, lab.ui_port, lab.ui_log)
    env = {**os.environ, "JUPYTER_TOKEN": lab.token, "WORKBENCH_UI_URL": lab.ui_url}
    env["WORKBENCH_PROJECT_DIR"] = str(settings.project_dir)
    procs["JupyterLab"] = server.spawn(
        jupyter_command(lab.host, lab.port, lab.root), env=env, log=lab.lab_log, cwd=lab.root
    )
    if "MLflow UI" in procs:
        server.wait_healthy(procs["MLflow UI"], lab.ui_url, lab.ui_log)
    _wait_jupyter(procs["JupyterLab"], lab.lab_url, lab.token, lab.lab_log)


def _announce(lab: _Lab, settings: Settings) -> None:
    """Both URLs (Jupyter's with its token) and the log files."""
    print(f"JupyterLab: {lab.lab_url}/lab?token={lab.token}", flush=True)
    print(
        f"MLflow UI:  {lab.ui_url}  (store {server.mask_uri(settings.tracking_uri)})",
        flush=True,
    )
    print(f"logs: {lab.lab_log}, {lab.ui_log}\nCtrl-C stops both.", flush=True)


def _watch(procs: dict[str, subprocess.Popen]) -> int:
    """Wait until one of the servers exits; that ends the session (EXIT_FAILED)."""
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(
                    f"{name} exited with code {proc.returncode}; stopping the other",
                    file=sys.stderr,
                )
                return EXIT_FAILED
        time.sleep(0.5)
