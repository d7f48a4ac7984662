"""``workbench server start|stop|status``: the team server's commands, what they print and
their exit codes (0 done, 1 failed, 2 bad usage: nothing started).

Every line they print masks passwords in URIs; the start itself is ``team.launch``.
"""

from __future__ import annotations

import sys

from workbench.core.config import get_settings
from workbench.server.auth import admin_password, require_auth_extra
from workbench.server.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ServerError, UsageProblem
from workbench.server.process import health
from workbench.server.state import ServerState, read_state
from workbench.server.team import check_exposure, launch, shutdown
from workbench.server.ui import interrupt_on_signals
from workbench.server.uris import is_loopback, mask_uri, normalize_store_uri


def start(
    *,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    auth: bool,
) -> int:
    """``workbench server start``: start, wait for /health, print what to export.

    Until the server answers it belongs to this command: Ctrl-C, SIGTERM or SIGHUP stop it
    and clear its record. Once it answers it runs detached, until ``server stop``.
    """
    try:
        check_exposure(host, auth)
        password = None
        if auth:
            require_auth_extra()
            password = admin_password()  # refuse before anything starts
        if backend_store_uri:
            store = mask_uri(normalize_store_uri(backend_store_uri))
            print(f"starting mlflow server on {store} ...", flush=True)
        with interrupt_on_signals():
            state = launch(
                backend_store_uri=backend_store_uri or "",
                artifacts_destination=artifacts_destination,
                host=host,
                port=port,
                auth=auth,
                password=password,
            )
    except ServerError as exc:
        print(f"workbench server start: {mask_uri(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageProblem) else EXIT_FAILED
    except KeyboardInterrupt:
        print("workbench server start: interrupted; nothing was left running", file=sys.stderr)
        return EXIT_FAILED
    _announce(state, host, auth)
    return EXIT_OK


def _announce(state: ServerState, host: str, auth: bool) -> None:
    """Where it answers, what it uses, and what to export."""
    print(f"mlflow server answering at {state.url}")
    print(f"  store:      {state.backend_store_uri}")
    print(
        f"  artifacts:  {state.artifacts_destination} (proxied: clients upload through the server)"
    )
    print(
        f"  auth:       {'basic-auth (admin user created from the given password)' if auth else 'off'}"
    )
    print(f"  log:        {state.log}   pid {state.pid}")
    if not is_loopback(host):
        print(
            f"  bound to {host}: basic auth sends passwords in every request; put a TLS "
            "reverse proxy in front (see docs/team-mode.md)."
        )
    print("\nPoint notebooks and the workbench command at it:")
    print(f"  export MLFLOW_TRACKING_URI={state.url}")
    if auth:
        print("  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
    print("Stop it with: workbench server stop")


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
        return _recorded_status(state)
    settings = get_settings()
    uri = mask_uri(settings.tracking_uri)
    if settings.is_remote:
        answers = health(settings.tracking_uri)
        print(
            f"no server started here; MLFLOW_TRACKING_URI points at {uri}: {'answering' if answers else 'NOT answering'}"
        )
        return EXIT_OK if answers else EXIT_FAILED
    print(
        f"no server started by `workbench server start` here; the configured store is {uri} (embedded)"
    )
    return EXIT_FAILED


def _recorded_status(state: ServerState) -> int:
    """What the state file says, checked: ours and alive, answering or not."""
    alive = state.is_ours()
    answers = alive and health(state.url)
    word = (
        "answering"
        if answers
        else ("running but not answering" if alive else "not running (stale state)")
    )
    print(f"server {word}: {state.url}  pid {state.pid}  started {state.started_at}")
    print(f"  store:     {mask_uri(state.backend_store_uri)}")
    print(f"  artifacts: {mask_uri(state.artifacts_destination)}")
    print(f"  auth:      {'basic-auth' if state.auth else 'off'}")
    print(f"  log:       {state.log}")
    return EXIT_OK if answers else EXIT_FAILED
