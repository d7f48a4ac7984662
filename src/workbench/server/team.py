"""Team mode: a real ``mlflow server`` (PostgreSQL in team use), started detached.

``launch`` runs ``python -m mlflow server`` in its own process group, on the given backend
store, with proxied artifacts (clients upload through the server, so nobody needs access to
the artifact folder or bucket), bound to 127.0.0.1 unless ``--host`` says otherwise (another
address only with ``--auth``), with the allowed Host headers set, and optionally MLflow's
basic-auth app. Under the project's lock it checks that none runs, starts it and records it
(pid, start ticks, port, masked store) in ``<project>/.workbench/server.json``; then it waits
for ``/health``. ``shutdown`` stops that process group and nothing else. This is the one
server that outlives the command that started it: ``workbench server stop`` ends it.

The store URI and the admin password reach the server through its environment, never its
command line (``ps`` shows command lines to every user of the machine).

Facts that shape it (MLflow 3.17): ``postgresql://`` URLs need psycopg 3 under SQLAlchemy
2.1, so they are rewritten to ``postgresql+psycopg://``; a server on PostgreSQL answered
``/health`` 14-36 s after start here; MLflow ships no default admin password, and the auth
app needs a static Flask secret key.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.core import processes
from workbench.core.config import get_settings
from workbench.core.ports import port_free, wait_http
from workbench.server.auth import (
    ADMIN_USERNAME_ENV,
    admin_env,
    admin_password,
    flask_secret_key,
    require_auth_extra,
    write_auth_config,
)
from workbench.server.errors import ServerError, UsageProblem
from workbench.server.process import (
    START_TIMEOUT_S,
    child_env,
    health,  # noqa: F401  (re-exported: tests/browser_ui imports it from here)
    log_tail,
    spawn,
    stop_group,
    store_env,
)
from workbench.server.state import (
    ServerState,
    default_state_file,
    process_create_time,
    read_state,
    state_lock,
    write_state,
)
from workbench.server.uris import (
    allowed_hosts,
    client_url,
    is_loopback,
    mask_uri,
    normalize_store_uri,
)

if TYPE_CHECKING:
    import subprocess


def server_command(
    host: str, port: int, *, auth: bool = False, workers: int | None = None
) -> list[str]:
    """The ``mlflow server`` command line (this interpreter, so the venv's mlflow).

    The store and the artifact destination are not on it: they go through the environment
    (``process.store_env``), where a password in them shows in no process list.
    """
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--serve-artifacts",
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
    """Start the server detached, record it, wait for ``/health``; return its state.

    Check, spawn and record happen under the project's lock, so a second ``start`` finds
    this one. It is recorded before it answers: a ``start`` killed meanwhile leaves a
    server that ``stop`` still finds. Raises ServerError (with the log's tail) when it
    cannot start or does not answer; then nothing is left running or recorded.
    """
    state_file = state_file or default_state_file()
    folder = state_file.parent
    proc = None
    try:
        with state_lock(folder):
            store_uri = _checked_start(state_file, backend_store_uri, host, port, auth=auth)
            dest = _artifacts_destination(artifacts_destination, folder)
            env = {**child_env(), **store_env(store_uri, artifacts_destination=dest)}
            if auth:
                _enable_auth(env, folder / f"auth-{port}", password)
            log = folder / f"server-{port}.log"
            cmd = server_command(host, port, auth=auth, workers=workers)
            proc = _spawn_logged(cmd, env, log, folder, store_uri)
            state = _record(state_file, proc.pid, host, port, store_uri, dest, auth, log)
        _wait_answering(proc, state.url, log, timeout)
    except BaseException:
        if proc is not None:
            _abandon(state_file, proc.pid)
        raise
    return state


def _record(
    state_file: Path,
    pid: int,
    host: str,
    port: int,
    store_uri: str,
    dest: str,
    auth: bool,
    log: Path,
) -> ServerState:
    """Write down what was started (passwords masked) and return it."""
    state = ServerState(
        pid=pid,
        host=host,
        port=port,
        url=client_url(host, port),
        backend_store_uri=mask_uri(store_uri),
        artifacts_destination=mask_uri(dest),
        auth=auth,
        log=str(log),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        start_ticks=processes.start_ticks(pid),
        create_time=process_create_time(pid) or 0.0,
    )
    write_state(state_file, state)
    return state


def _checked_start(
    state_file: Path, backend_store_uri: str, host: str, port: int, *, auth: bool
) -> str:
    """The normalized store URI, once no workbench server runs already, the address is
    loopback or auth is on, and the port is free."""
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
    check_exposure(host, auth)
    store_uri = normalize_store_uri(backend_store_uri)
    if not port_free(host, port):
        raise UsageProblem(
            f"port {port} on {host} is already in use.\nfix: choose another with --port"
        )
    return store_uri


def check_exposure(host: str, auth: bool) -> None:
    """Refuse (UsageProblem) a server without auth on an address other machines reach."""
    if auth or is_loopback(host):
        return
    raise UsageProblem(
        f"refusing to start a server on {host} without --auth: anyone who reaches that "
        "address could read, change and delete every run and register models.\n"
        "fix: add --auth (and put a TLS reverse proxy in front, see docs/team-mode.md), "
        "or keep --host 127.0.0.1 behind a reverse proxy that authenticates"
    )


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


def _enable_auth(env: dict[str, str], auth_folder: Path, password: str | None) -> None:
    """Point ``env`` at the auth config and the Flask secret key, and give it the admin's
    name and password (exactly as given, through the environment only)."""
    require_auth_extra()
    username = os.environ.get(ADMIN_USERNAME_ENV) or "admin"
    pw = password if password is not None else admin_password()
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(auth_folder))
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret_key(auth_folder)
    env.update(admin_env(username, pw))


def _spawn_logged(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path, store_uri: str
) -> subprocess.Popen:
    """Start ``cmd`` detached, logging to ``log`` after a header with the command and the
    store (masked)."""
    with log.open("a") as fh:
        fh.write(f"\n==== workbench server start {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        fh.write("command: " + shlex.join(mask_uri(c) for c in cmd) + "\n")
        fh.write(f"store: {mask_uri(store_uri)}\n")
    return spawn(cmd, env=env, log=log, cwd=cwd, detached=True)


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


def _abandon(state_file: Path, pid: int) -> None:
    """A start that failed or was interrupted: stop its server, forget its record."""
    stop_group(pid)
    with state_lock(state_file.parent):
        current = read_state(state_file)
        if current is not None and current.pid == pid:
            state_file.unlink(missing_ok=True)


def shutdown(state_file: Path | None = None) -> ServerState | None:
    """Stop the server recorded in ``state_file`` if it is still the process we started.

    Returns the state it stopped, or None when there was nothing of ours to stop. The
    state file goes either way (a stale one would only mislead).
    """
    state_file = state_file or default_state_file()
    with state_lock(state_file.parent):
        state = read_state(state_file)
        if state is None:
            return None
        stopped = None
        if state.is_ours():
            stop_group(state.pid)
            stopped = state
        state_file.unlink(missing_ok=True)
    return stopped
