"""``workbench ui``: the MLflow UI on the configured store, in the foreground until Ctrl-C.

A plain ``mlflow server`` without an artifact proxy (notebooks write artifacts directly and
the UI reads them from there). ``workbench lab`` starts the same UI next to JupyterLab.

It has no authentication, so it binds to loopback only (another ``--host`` is refused:
``uris.require_loopback``); it dies with the command, however that ends (``server.guard``);
the store's URI reaches it through the environment, never its command line.
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
from workbench.server.process import (
    START_TIMEOUT_S,
    child_env,
    log_tail,
    spawn,
    stop_group,
    store_env,
)
from workbench.server.state import state_dir
from workbench.server.uris import (
    allowed_hosts,
    client_url,
    mask_uri,
    normalize_store_uri,
    require_loopback,
)


def ui_command(host: str, port: int) -> list[str]:
    """``mlflow server`` without an artifact proxy, one worker (the store: ``ui_env``).

    No artifact proxy: the embedded store's experiments point at ``file://`` folders that
    notebooks write directly, and the UI reads them from there.
    """
    return [
        sys.executable, "-m", "mlflow", "server", "--no-serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
        "--allowed-hosts", ",".join(allowed_hosts(host, port)),
    ]  # fmt: skip


def ui_env() -> dict[str, str]:
    """The UI's environment: the configured store and artifact root (out of ``ps``)."""
    settings = get_settings()
    root = settings.artifact_root.as_uri() if settings.artifact_root is not None else None
    store = normalize_store_uri(settings.tracking_uri, settings.project_dir)
    return {**child_env(), **store_env(store, default_artifact_root=root)}


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
    return spawn(ui_command(host, port), env=ui_env(), log=log, cwd=settings.project_dir)


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
def interrupt_on_signals():
    """Turn SIGTERM and SIGHUP (a closed terminal) into KeyboardInterrupt while in the
    foreground, so the same cleanup as Ctrl-C runs (main thread only)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def ui(*, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``workbench ui``: the MLflow UI on the configured store until Ctrl-C."""
    settings = get_settings()
    if settings.is_remote:
        print(
            f"the configured store is a tracking server: its UI is {mask_uri(settings.tracking_uri)}"
        )
        return EXIT_OK
    try:
        require_loopback(host, "the MLflow UI")
    except UsageProblem as exc:
        print(f"workbench ui: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log = state_dir() / f"ui-{port}.log"
    with interrupt_on_signals():
        proc = None
        try:
            proc = start_ui(host, port, log)
            url = client_url(host, port)
            wait_healthy(proc, url, log)
            print(
                f"MLflow UI: {url}  (store {mask_uri(settings.tracking_uri)}; Ctrl-C stops it)",
                flush=True,
            )
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
