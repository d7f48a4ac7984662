"""Store URIs and addresses for the MLflow server: the backend store URI MLflow gets
(``postgresql://`` rewritten for psycopg 3, SQLite paths made absolute), passwords masked
for printing, whether an address is loopback (a UI without auth binds nowhere else), the
Host headers it accepts, and the URL clients use.

Pure functions (no process, no network), so the server's command line is easy to test.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

from workbench.core.config import get_settings
from workbench.core.secrets import mask_url
from workbench.server.errors import UsageProblem

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def normalize_store_uri(uri: str, base: Path | None = None) -> str:
    """The backend store URI MLflow should get.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3 is what
    is installed; SQLAlchemy 2.1 would look for psycopg2). Relative SQLite paths are made
    absolute against the project. HTTP URIs are refused: that is a server, not a store.
    """
    from workbench.core.config import resolve_sqlite_uri

    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        raise UsageProblem(
            f"{mask_uri(uri)!r} is a tracking server, not a backend store.\n"
            "fix: give the database the server should use, e.g. "
            "--backend-store-uri postgresql://USER@HOST:5432/mlflow"
        )
    for plain in ("postgresql://", "postgres://"):
        if uri.startswith(plain):
            return "postgresql+psycopg://" + uri[len(plain) :]
    return resolve_sqlite_uri(uri, base or get_settings().project_dir)


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for printing and the state file)."""
    return mask_url(uri)


def is_loopback(host: str) -> bool:
    """True when ``host`` is this machine only: ``localhost``, 127.0.0.0/8, ``::1``, or a
    name all of whose addresses are loopback. ``0.0.0.0``, ``::`` and LAN addresses are not."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0].split("%")[0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a).is_loopback for a in found)


def require_loopback(host: str, what: str) -> None:
    """Refuse (UsageProblem, nothing started) to serve ``what`` without authentication on an
    address other machines can reach."""
    if is_loopback(host):
        return
    raise UsageProblem(
        f"refusing to serve {what} on {host} without authentication: anyone who reaches "
        "that address could read, change and delete every run and register models.\n"
        "fix: keep the default --host 127.0.0.1 (from elsewhere, use an SSH tunnel), or share "
        "a team server with authentication (`workbench server start --auth --host 0.0.0.0`, "
        "see docs/team-mode.md), or put a reverse proxy with authentication in front of a "
        "server bound to 127.0.0.1"
    )


def allowed_hosts(host: str, port: int) -> list[str]:
    """Host headers the server accepts (DNS-rebinding protection).

    Loopback names always; the bind address and this machine's names when bound elsewhere;
    plus ``$WORKBENCH_ALLOWED_HOSTS`` (comma-separated, e.g. the public name a TLS proxy
    forwards). MLflow's own default would also admit every private-network address.
    """
    names = ["localhost", "127.0.0.1", "[::1]"]
    if host not in (*LOOPBACK, "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    if host in ("0.0.0.0", "::"):
        names += [socket.gethostname(), socket.getfqdn()]
    extra = [
        h.strip() for h in os.environ.get("WORKBENCH_ALLOWED_HOSTS", "").split(",") if h.strip()
    ]
    out: list[str] = []
    for name in [*names, *extra]:
        has_port = re.search(r"(^[^:\[]+|\])(:[\d*]+)$", name) is not None
        out += [name] if has_port else [name, f"{name}:{port}"]
    return list(dict.fromkeys(out))


def client_url(host: str, port: int) -> str:
    """The URL clients on this machine use for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
