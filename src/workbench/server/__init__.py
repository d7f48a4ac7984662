"""Servers the workbench starts: the team tracking server (PostgreSQL), ``ui`` and ``lab``.

What binds where, what dies with its command and what is never shown: docs/team-mode.md.
The parts: ``uris`` (store URIs, masking, loopback, allowed hosts), ``auth`` (admin password,
auth config), ``state`` (the state file and its lock), ``process`` (process groups, health),
``guard`` (children that die with their command), ``team`` (the detached team server),
``commands`` (``server start|stop|status``), ``ui`` and ``lab``.
"""

from workbench.core.ports import free_port, port_free, wait_http
from workbench.server.auth import (
    ADMIN_PASSWORD_ENV,
    ADMIN_USERNAME_ENV,
    MIN_PASSWORD_LEN,
    admin_env,
    admin_password,
    require_auth_extra,
    write_auth_config,
)
from workbench.server.commands import (
    start,
    status,
    stop,
)
from workbench.server.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ServerError,
    UsageProblem,
)
from workbench.server.process import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    child_env,
    guarded,
    health,
    log_tail,
    spawn,
    stop_group,
    store_env,
)
from workbench.server.state import (
    STATE_DIRNAME,
    ServerState,
    default_state_file,
    read_state,
    state_dir,
    state_lock,
    write_private,
    write_state,
)
from workbench.server.team import (
    check_exposure,
    launch,
    server_command,
    shutdown,
)
from workbench.server.ui import (
    interrupt_on_signals,
    start_ui,
    ui,
    ui_command,
    ui_env,
    wait_healthy,
)
from workbench.server.uris import (
    LOOPBACK,
    allowed_hosts,
    client_url,
    is_loopback,
    mask_uri,
    normalize_store_uri,
    require_loopback,
)

__all__ = [
    "ADMIN_PASSWORD_ENV",
    "ADMIN_USERNAME_ENV",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOOPBACK",
    "MIN_PASSWORD_LEN",
    "START_TIMEOUT_S",
    "STATE_DIRNAME",
    "STOP_TIMEOUT_S",
    "ServerError",
    "ServerState",
    "UsageProblem",
    "admin_env",
    "admin_password",
    "allowed_hosts",
    "check_exposure",
    "child_env",
    "client_url",
    "default_state_file",
    "free_port",
    "guarded",
    "health",
    "interrupt_on_signals",
    "is_loopback",
    "launch",
    "log_tail",
    "mask_uri",
    "normalize_store_uri",
    "port_free",
    "read_state",
    "require_auth_extra",
    "require_loopback",
    "server_command",
    "shutdown",
    "spawn",
    "start",
    "start_ui",
    "state_dir",
    "state_lock",
    "status",
    "stop",
    "stop_group",
    "store_env",
    "ui",
    "ui_command",
    "ui_env",
    "wait_healthy",
    "wait_http",
    "write_auth_config",
    "write_private",
    "write_state",
]
