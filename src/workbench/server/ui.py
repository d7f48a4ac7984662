"""``workbench ui``: the MLflow UI on the configured store, in the foreground until Ctrl-C.

A plain ``mlflow server`` without an artifact proxy (notebooks write artifacts directly and
the UI reads them from there). ``workbench lab`` starts the same UI next to JupyterLab.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.core.config import get_settings
from workbench.core.ports import port_free, wait_http
from workbench.server.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ServerError, UsageProblem
from workbench.server.process import START_TIMEOUT_S, child_env, log_tail, spawn, stop_group
from workbench.server.state import state_dir
from workbench.server.uris import LOOPBACK, allowed_hosts, client_url, mask_uri, normalize_store_uri


def ui_command(host: str, port: int) -> list[str]:
    """``mlflow server`` over the configured store, artifacts read where the store keeps them.

    No artifact proxy: the embedded store's experiments point at ``file://`` folders that
    notebooks write directly, and the UI reads them from there.
    """
    settings = get_settings()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", normalize_store_uri(settings.tracking_uri, settings.project_dir),
        "--no-serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
        "--allowed-hosts", ",".join(allowed_hosts(host, port)),
    ]  # fmt: skip
    if settings.artifact_root is not None:
        cmd += ["--default-artifact-root", settings.artifact_root.as_uri()]
    return cmd


def start_ui(host: str, port: int, log: Path) -> subprocess.Popen:
    """Prepare the configured store once, then start the UI process (detached group)."""
    from workbench.core import store

    settings = get_settings()
    store.connect(settings, activate=False)  # a fresh SQLite store is migrated once, under a lock
    if settings.artifact_root is not None:
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
    if not port_free(host, port):
        raise UsageProblem(
            f"port {port} on {host} is already in use.\nfix: choose another with --port"
        )
    return spawn(ui_command(host, port), env=child_env(), log=log, cwd=settings.project_dir)


def wait_healthy(
    proc: subprocess.Popen, url: str, log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    """Wait until ``url``/health answers; raise ServerError if the process dies or times out."""
    if wait_http(url.rstrip("/") + "/health", proc=proc, timeout=timeout):
        return
    if proc.poll() is not None:
        raise ServerError(
            f"the MLflow UI exited with code {proc.returncode}.\nlog ({log}):\n{log_tail(log)}"
        )
    raise ServerError(
        f"the MLflow UI did not answer {url} within {timeout:.0f} s.\nlog ({log}):\n{log_tail(log)}"
    )


@contextlib.contextmanager
def terminate_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt while in the foreground, so cleanup runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def ui(*, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``workbench ui``: the MLflow UI on the configured store until Ctrl-C."""
    settings = get_settings()
    if settings.is_remote:
        print(f"the configured store is a tracking server: its UI is {settings.tracking_uri}")
        return EXIT_OK
    log = state_dir() / f"ui-{port}.log"
    with terminate_on_sigterm():
        proc = None
        try:
            proc = start_ui(host, port, log)
            url = client_url(host, port)
            wait_healthy(proc, url, log)
            print(
                f"MLflow UI: {url}  (store {mask_uri(settings.tracking_uri)}; Ctrl-C stops it)",
                flush=True,
            )
            if host not in LOOPBACK:
                print(f"  bound to {host}: anyone who reaches this port sees every run", flush=True)
            while proc.poll() is None:
                time.sleep(0.5)
            print(f"the MLflow UI exited with code {proc.returncode}; log: {log}", file=sys.stderr)
            return EXIT_FAILED
        except ServerError as exc:
            print(f"workbench ui: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, UsageProblem) else EXIT_FAILED
        except KeyboardInterrupt:
            print("stopping the MLflow UI", flush=True)
            return EXIT_OK
        finally:
            if proc is not None:
                stop_group(proc.pid)
                proc.wait()
