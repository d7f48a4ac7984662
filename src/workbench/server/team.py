"""Team mode: a real ``mlflow server`` (PostgreSQL in team use), and ``workbench ui``.

``workbench server start`` runs ``python -m mlflow server`` detached, on the given backend
store, with proxied artifacts (clients upload through the server, so nobody needs access to
the artifact folder or bucket), bound to 127.0.0.1 unless ``--host`` says otherwise, with the
allowed Host headers set, and optionally MLflow's basic-auth app. It waits for ``/health``,
then records what it started (pid, start time, port, store) in
``<project>/.workbench/server.json`` so that ``stop`` stops that process group and nothing
else, and ``status`` can say whether it answers and which store it uses.

Facts that shape it (MLflow 3.17): ``postgresql://`` URLs need psycopg 3 under SQLAlchemy
2.1, so they are rewritten to ``postgresql+psycopg://``; a server on PostgreSQL answered
``/health`` 14-36 s after start here; MLflow ships no default admin password, and the auth
app needs a static Flask secret key.

``ui()`` serves the MLflow UI on the configured store (the embedded SQLite store by default)
in the foreground until Ctrl-C.

The parts live in ``server.uris`` (store URIs, masking, allowed hosts), ``server.auth``
(admin password, auth config), ``server.state`` (the state file), ``server.process``
(process groups, health) and ``server.ui`` (``workbench ui``); their public names are
re-exported here.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.core.config import get_settings
from workbench.core.ports import free_port as free_port  # server.free_port: tests, benchmarks
from workbench.core.ports import port_free, wait_http
from workbench.server.auth import (
    ADMIN_PASSWORD_ENV,  # noqa: F401  (re-exported)
    ADMIN_USERNAME_ENV,
    MIN_PASSWORD_LEN,  # noqa: F401  (re-exported)
    admin_password,
    flask_secret_key,
    require_auth_extra,
    write_auth_config,
)
from workbench.server.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ServerError, UsageProblem
from workbench.server.process import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,  # noqa: F401  (re-exported)
    child_env,
    health,
    log_tail,
    spawn,
    stop_group,
)
from workbench.server.state import (
    STATE_DIRNAME,  # noqa: F401  (re-exported)
    ServerState,
    default_state_file,
    process_create_time,
    read_state,
    state_dir,  # noqa: F401  (re-exported)
    write_private,
)
from workbench.server.ui import (  # noqa: F401  (re-exported: cli, lab, tests)
    start_ui,
    terminate_on_sigterm,
    ui,
    ui_command,
    wait_healthy,
)
from workbench.server.uris import (
    LOOPBACK,
    allowed_hosts,  # noqa: F401  (re-exported)
    client_url,
    mask_uri,
    normalize_store_uri,
)

if TYPE_CHECKING:
    import subprocess


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    *,
    auth: bool = False,
    workers: int | None = None,
) -> list[str]:
    """The ``mlflow server`` command line (this interpreter, so the venv's mlflow)."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        "--host", host, "--port", str(port),
        "--allowed-hosts", ",".join(allowed_hosts(host, port)),
    ]  # fmt: skip
    if workers or os.environ.get("WORKBENCH_SERVER_WORKERS"):
        cmd += ["--workers", str(workers or os.environ["WORKBENCH_SERVER_WORKERS"])]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def launch(
    *,
    backend_store_uri: str,
    artifacts_destination: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    auth: bool = False,
    password: str | None = None,
    state_file: Path | None = None,
    workers: int | None = None,
    timeout: float = START_TIMEOUT_S,
) -> ServerState:
    """Start the server detached, wait for ``/health``, record and return its state.

    Raises ServerError (with the log's tail) when it cannot start or does not answer.
    """
    state_file = state_file or default_state_file()
    folder = state_file.parent
    store_uri = _checked_start(state_file, backend_store_uri, host, port)
    dest = _artifacts_destination(artifacts_destination, folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = child_env()
    auth_folder = folder / f"auth-{port}"
    if auth:
        username = _enable_auth(env, auth_folder, password)
    log = folder / f"server-{port}.log"
    cmd = server_command(store_uri, dest, host, port, auth=auth, workers=workers)
    proc = _spawn_logged(cmd, env, log, folder)
    url = client_url(host, port)
    try:
        _wait_answering(proc, url, log, timeout)
    except BaseException:
        stop_group(proc.pid)
        raise
    finally:
        if auth:
            # The admin user exists now (or start failed): the password leaves the disk.
            write_auth_config(auth_folder, username=username, password=None)
    state = ServerState(
        pid=proc.pid,
        create_time=process_create_time(proc.pid) or 0.0,
        host=host,
        port=port,
        url=url,
        backend_store_uri=mask_uri(store_uri),
        artifacts_destination=dest,
        auth=auth,
        log=str(log),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    write_private(state_file, json.dumps(asdict(state), indent=2))
    return state


def _checked_start(state_file: Path, backend_store_uri: str, host: str, port: int) -> str:
    """The normalized store URI, once no workbench server runs already and the port is free."""
    current = read_state(state_file)
    if current is not None and current.is_ours():
        raise UsageProblem(
            f"a server started by workbench already runs (pid {current.pid}, {current.url}, "
            f"store {current.backend_store_uri}).\nfix: `workbench server stop` first"
        )
    if not backend_store_uri:
        raise UsageProblem(
            "--backend-store-uri is required, e.g. postgresql://USER@HOST:5432/mlflow "
            "(or sqlite:///team.db to try it out on one machine)"
        )
    store_uri = normalize_store_uri(backend_store_uri)
    if not port_free(host, port):
        raise UsageProblem(
            f"port {port} on {host} is already in use.\nfix: choose another with --port"
        )
    return store_uri


def _artifacts_destination(artifacts_destination: str | None, folder: Path) -> str:
    """The artifact root: a URI as given, or a folder (relative to the project; default
    ``<state folder>/server-artifacts``) made absolute and created."""
    project = get_settings().project_dir
    dest = artifacts_destination or str(folder / "server-artifacts")
    if "://" not in dest:
        dest_path = (project / Path(dest).expanduser()).resolve()
        dest_path.mkdir(parents=True, exist_ok=True)
        dest = str(dest_path)
    return dest


def _enable_auth(env: dict[str, str], auth_folder: Path, password: str | None) -> str:
    """Point ``env`` at a fresh auth config (admin user and password) and the Flask secret
    key; returns the admin's user name. The admin name variable stays out of the child."""
    require_auth_extra()
    username = os.environ.get(ADMIN_USERNAME_ENV) or "admin"
    pw = password if password is not None else admin_password()
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(
        write_auth_config(auth_folder, username=username, password=pw)
    )
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret_key(auth_folder)
    env.pop(ADMIN_USERNAME_ENV, None)
    return username


def _spawn_logged(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` detached, logging to ``log`` after a header with the (masked) command."""
    with log.open("a") as fh:
        fh.write(f"\n==== workbench server start {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        fh.write("command: " + shlex.join(mask_uri(c) for c in cmd) + "\n")
    return spawn(cmd, env=env, log=log, cwd=cwd)


def _wait_answering(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Wait for ``/health``; a ServerError with the log's tail when the server exited or
    stayed silent."""
    if not wait_http(url + "/health", proc=proc, timeout=timeout):
        if proc.poll() is not None:
            raise ServerError(
                f"mlflow server exited with code {proc.returncode} before answering.\n"
                f"log ({log}):\n{log_tail(log)}"
            )
        raise ServerError(
            f"mlflow server did not answer {url}/health within {timeout:.0f} s.\nlog ({log}):\n{log_tail(log)}"
        )


def shutdown(state_file: Path | None = None) -> ServerState | None:
    """Stop the server recorded in ``state_file`` if it is still the process we started.

    Returns the state it stopped, or None when there was nothing of ours to stop. The
    state file goes either way (a stale one would only mislead).
    """
    state_file = state_file or default_state_file()
    state = read_state(state_file)
    if state is None:
        return None
    stopped = None
    if state.is_ours():
        stop_group(state.pid)
        stopped = state
    state_file.unlink(missing_ok=True)
    return stopped


def start(
    *,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    auth: bool,
) -> int:
    """``workbench server start``: start, wait for /health, print what to export."""
    try:
        if auth:
            require_auth_extra()
            password = admin_password()  # refuse before anything starts
        if backend_store_uri:
            print(
                f"starting mlflow server on {mask_uri(normalize_store_uri(backend_store_uri))} ...",
                flush=True,
            )
        state = launch(
            backend_store_uri=backend_store_uri or "",
            artifacts_destination=artifacts_destination,
            host=host,
            port=port,
            auth=auth,
            password=password if auth else None,
        )
    except ServerError as exc:
        print(f"workbench server start: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageProblem) else EXIT_FAILED
    print(f"mlflow server answering at {state.url}")
    print(f"  store:      {state.backend_store_uri}")
    print(
        f"  artifacts:  {state.artifacts_destination} (proxied: clients upload through the server)"
    )
    print(
        f"  auth:       {'basic-auth (admin user created from the given password)' if auth else 'off'}"
    )
    print(f"  log:        {state.log}   pid {state.pid}")
    if host not in LOOPBACK:
        print(f"  bound to {host}: put a TLS reverse proxy in front (see docs/team-mode.md).")
        if not auth:
            print("  WARNING: no --auth: anyone who reaches this port can read and write.")
    print("\nPoint notebooks and the workbench command at it:")
    print(f"  export MLFLOW_TRACKING_URI={state.url}")
    if auth:
        print("  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
    print("Stop it with: workbench server stop")
    return EXIT_OK


def stop() -> int:
    """``workbench server stop``: stop what ``start`` started, and nothing else."""
    try:
        state = read_state()
        stopped = shutdown()
    except ServerError as exc:
        print(f"workbench server stop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if stopped is not None:
        print(f"stopped the mlflow server at {stopped.url} (pid {stopped.pid})")
    elif state is not None:
        print(
            f"the server recorded at {state.url} (pid {state.pid}) was no longer running; state cleared"
        )
    else:
        print("no server started by `workbench server start` in this project; nothing to stop")
    return EXIT_OK


def status() -> int:
    """``workbench server status``: whether it answers and which store it uses.

    Exit 0 when a server answers, 1 when none does.
    """
    try:
        state = read_state()
    except ServerError as exc:
        print(f"workbench server status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if state is not None:
        alive = state.is_ours()
        answers = alive and health(state.url)
        word = (
            "answering"
            if answers
            else ("running but not answering" if alive else "not running (stale state)")
        )
        print(f"server {word}: {state.url}  pid {state.pid}  started {state.started_at}")
        print(f"  store:     {state.backend_store_uri}")
        print(f"  artifacts: {state.artifacts_destination}")
        print(f"  auth:      {'basic-auth' if state.auth else 'off'}")
        print(f"  log:       {state.log}")
        return EXIT_OK if answers else EXIT_FAILED
    settings = get_settings()
    if settings.is_remote:
        answers = health(settings.tracking_uri)
        print(
            f"no server started here; MLFLOW_TRACKING_URI points at {settings.tracking_uri}: {'answering' if answers else 'NOT answering'}"
        )
        return EXIT_OK if answers else EXIT_FAILED
    print(
        f"no server started by `workbench server start` here; the configured store is {mask_uri(settings.tracking_uri)} (embedded)"
    )
    return EXIT_FAILED
