"""Basic auth for the MLflow server: the admin password (no default: from the environment or
a prompt), the check for MLflow's auth extra, the private auth config file and the static
Flask secret key the auth app needs.

Kept apart from ``server`` because it is the part that handles secrets: what is written,
where, and with which file modes is all here. The admin password is kept exactly as typed
(a ``%`` and leading or trailing spaces included): it reaches ``mlflow server`` through its
environment, never a config file (configparser would interpolate ``%`` and strip spaces).
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from pathlib import Path

from workbench.server.errors import UsageProblem
from workbench.server.state import write_private

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
MIN_PASSWORD_LEN = 12  # MLflow's own rule for basic-auth passwords


def admin_password(*, prompt: bool = True) -> str:
    """The admin password: ``$MLFLOW_AUTH_ADMIN_PASSWORD``, else a prompt on a terminal.

    There is no default; without one ``start --auth`` refuses to run.
    """
    password = os.environ.get(ADMIN_PASSWORD_ENV, "")
    if not password and prompt and sys.stdin.isatty():
        password = getpass.getpass("admin password for the MLflow server (not echoed): ")
        if password and getpass.getpass("again: ") != password:
            raise UsageProblem("the two passwords differ; nothing was started")
    if not password:
        raise UsageProblem(
            "--auth needs an admin password and there is no default.\n"
            f"fix: export {ADMIN_PASSWORD_ENV}=... (at least {MIN_PASSWORD_LEN} characters) "
            "or run the command on a terminal to be prompted"
        )
    if len(password) < MIN_PASSWORD_LEN:
        raise UsageProblem(f"the admin password must have at least {MIN_PASSWORD_LEN} characters")
    return password


def require_auth_extra() -> None:
    """MLflow's basic-auth app needs Flask-WTF (the ``mlflow[auth]`` extra)."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise UsageProblem(
            "--auth needs MLflow's auth extra (Flask-WTF), which is not installed.\n"
            "fix: pip install 'mlflow[auth]' in this environment"
        )


def write_auth_config(folder: Path) -> Path:
    """Write MLflow's basic-auth config into a private folder (0700, file 0600).

    The auth database is SQLite in the same folder: only the server reads it. Anyone
    authenticated may read every experiment (``default_permission = READ``); writing needs
    ownership (the creator) or a granted permission. The admin's name and password are not
    in it: they reach the server through its environment (``admin_env``), exactly as given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    db = os.environ.get("WORKBENCH_AUTH_DATABASE_URI") or f"sqlite:///{folder / 'basic_auth.db'}"
    lines = [
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {ini_value(db, 'WORKBENCH_AUTH_DATABASE_URI')}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ]
    path = folder / "basic_auth.ini"
    write_private(path, "\n".join(lines))
    return path


def ini_value(value: str, what: str) -> str:
    """``value`` as MLflow's configparser reads it back unchanged: ``%`` doubled (its
    interpolation), and refused when a line break or edge space would be cut or misread."""
    if any(c in value for c in "\r\n") or value != value.strip():
        raise UsageProblem(
            f"{what} contains a line break or starts or ends with a space, which MLflow's "
            "config file cannot hold.\nfix: remove them"
        )
    return value.replace("%", "%%")


def admin_env(username: str, password: str) -> dict[str, str]:
    """What the server's environment gets so it creates the admin user: the name and the
    password exactly as given (``%`` and edge spaces included; no config file parses them,
    and neither is ever written to disk or a command line)."""
    return {ADMIN_USERNAME_ENV: username, ADMIN_PASSWORD_ENV: password}


def flask_secret_key(folder: Path) -> str:
    """A static secret key for the auth app's CSRF protection, kept across restarts."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = folder / "flask_secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    write_private(path, key)
    return key
