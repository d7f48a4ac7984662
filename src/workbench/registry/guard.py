"""Who acts on the registry, and one move of the champion at a time.

``current_user`` names the account MLflow authenticates as (so audit tags on a team server
name the person, not the machine's login). ``champion_guard`` serialises moves of an alias and
``check_champion_unchanged`` re-reads the alias inside it: a promotion decided against one
champion never overwrites another that a colleague crowned meanwhile.
"""

from __future__ import annotations

import getpass
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from workbench.registry.decisions import CHAMPION, RegistryError
from workbench.registry.versions import get_version

GUARD_TIMEOUT_S = 120
_GUARD = threading.Lock()


def current_user() -> str:
    """Who is acting: the user MLflow authenticates as (``MLFLOW_TRACKING_USERNAME``, else the
    credentials file MLflow reads), else the login name, else ``$USER``, else ``unknown``.

    On a team server the audit tags then name the account that made the change, not whoever
    the operating system says is logged in.
    """
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    try:
        from mlflow.utils.credentials import read_mlflow_creds

        if user := read_mlflow_creds().username:
            return str(user)
    except Exception:  # noqa: BLE001 - an unreadable credentials file: fall back to the OS
        pass
    try:
        return getpass.getuser()
    except Exception:  # getpass raises several types when no user is known
        return os.environ.get("USER") or "unknown"


@contextmanager
def champion_guard() -> Iterator[None]:
    """One move of an alias at a time: across threads of this process, and across processes
    sharing an embedded (SQLite) store through a file lock beside its database.

    MLflow's registry has no compare-and-set, so against a tracking server the re-read of the
    alias just before the move (``check_champion_unchanged``) is the guard across machines.
    """
    from workbench.core.config import get_settings, sqlite_path

    db = sqlite_path(get_settings().tracking_uri)
    with _GUARD:
        if db is None:
            yield
            return
        from filelock import FileLock

        with FileLock(str(db) + ".registry.lock", timeout=GUARD_TIMEOUT_S):
            yield


def check_champion_unchanged(name: str, version: str, expected: str | None) -> None:
    """Refuse to move ``champion`` when it no longer names the version the decision saw."""
    now = get_version(name, CHAMPION)
    seen = str(now.version) if now is not None else None
    if seen != expected:
        was = f"v{expected}" if expected else "no champion"
        is_now = f"v{seen}" if seen else "no champion"
        raise RegistryError(
            f"the champion of {name} changed from {was} to {is_now} while v{version} was being "
            f"judged; nothing was moved or recorded.\nfix: run the promotion again, so that "
            f"v{version} is compared with {is_now}"
        )
