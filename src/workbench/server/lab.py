"""``workbench lab``: JupyterLab in ``notebooks/`` and the MLflow UI, together, on loopback.

What an instructor runs at the start of a session: one command, two URLs, one Ctrl-C. Both
servers bind to 127.0.0.1 (``--host`` to change it); Jupyter requires a token, taken from
``$JUPYTER_TOKEN`` or generated fresh, and passed through the environment so it never shows
in the process list. Kernels get ``WORKBENCH_UI_URL`` so run links printed in notebooks point
at this UI. When the configured store is a tracking server, its own UI is used instead.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from workbench import server
from workbench.core import ports
from workbench.core.config import get_settings

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


def jupyter_ready(url: str, token: str, timeout: float = 3.0) -> bool:
    """True when Jupyter answers an authenticated API call."""
    return ports.answers(
        f"{url}/api/status", timeout=timeout, headers={"Authorization": f"token {token}"}
    )


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


def main(*, port: int = 8888, ui_port: int = 5000, host: str = "127.0.0.1") -> int:
    """Start both, print both URLs, stop both on Ctrl-C or SIGTERM (or when one exits)."""
    settings = get_settings()
    root = settings.project_dir / "notebooks"
    if not root.is_dir():
        root = settings.project_dir
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    logs = server.state_dir()
    lab_log, ui_log = logs / f"lab-{port}.log", logs / f"ui-{ui_port}.log"
    for p, what in ((port, "--port"), (ui_port, "--ui-port")):
        if not ports.port_free(host, p):
            print(
                f"workbench lab: port {p} on {host} is already in use; choose another with {what}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if port == ui_port:
        print("workbench lab: --port and --ui-port must differ", file=sys.stderr)
        return EXIT_USAGE

    lab_url = server.client_url(host, port)
    ui_url = (
        settings.tracking_uri.rstrip("/")
        if settings.is_remote
        else server.client_url(host, ui_port)
    )
    procs: dict[str, subprocess.Popen] = {}
    with server.terminate_on_sigterm():
        try:
            if not settings.is_remote:
                procs["MLflow UI"] = server.start_ui(host, ui_port, ui_log)
            env = {**os.environ, "JUPYTER_TOKEN": token, "WORKBENCH_UI_URL": ui_url}
            env["WORKBENCH_PROJECT_DIR"] = str(settings.project_dir)
            procs["JupyterLab"] = server.spawn(
                jupyter_command(host, port, root), env=env, log=lab_log, cwd=root
            )
            if "MLflow UI" in procs:
                server.wait_healthy(procs["MLflow UI"], ui_url, ui_log)
            _wait_jupyter(procs["JupyterLab"], lab_url, token, lab_log)
            print(f"JupyterLab: {lab_url}/lab?token={token}", flush=True)
            print(
                f"MLflow UI:  {ui_url}  (store {server.mask_uri(settings.tracking_uri)})",
                flush=True,
            )
            print(f"logs: {lab_log}, {ui_log}\nCtrl-C stops both.", flush=True)
            while True:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        print(
                            f"{name} exited with code {proc.returncode}; stopping the other",
                            file=sys.stderr,
                        )
                        return EXIT_FAILED
                time.sleep(0.5)
        except server.ServerError as exc:
            print(f"workbench lab: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, server.UsageProblem) else EXIT_FAILED
        except KeyboardInterrupt:
            print("stopping JupyterLab and the MLflow UI", flush=True)
            return EXIT_OK
        finally:
            for proc in procs.values():
                server.stop_group(proc.pid)
