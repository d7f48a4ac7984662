"""Search storage: open an Optuna storage from a URL, in memory, a journal file or an RDB.

``journal:PATH`` serves processes on one machine; an RDB URL such as
``postgresql+psycopg://user@host/db`` serves several machines, with a heartbeat that fails
the trials of a lost worker. URLs are normalized so workers elsewhere see the same storage,
and redacted before they are logged.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from workbench.search.trials import close_stale_trial

HEARTBEAT_ENV = "WORKBENCH_SEARCH_HEARTBEAT"  # seconds between RDB heartbeats (default 10)
STORAGE_ENV = "WORKBENCH_SEARCH_STORAGE"  # the storage URL for workers (kept off command lines)


class SearchError(RuntimeError):
    """The search cannot run or finish as asked; the message says what to do."""


def storage_kind(url: str | None) -> str:
    """``memory``, ``journal`` or ``rdb``."""
    if not url or url == "memory":
        return "memory"
    return "journal" if url.startswith("journal:") else "rdb"


def normalize_storage(url: str | None) -> str | None:
    """The storage URL as workers elsewhere must see it: a journal path made absolute,
    ``postgresql://`` spelled ``postgresql+psycopg://`` (psycopg 3 is what is installed)."""
    kind = storage_kind(url)
    if kind == "memory":
        return None
    if kind == "journal":
        path = Path(url.removeprefix("journal:").removeprefix("//")).expanduser().resolve()
        return f"journal:{path}"
    for old in ("postgresql://", "postgres://"):
        if url.startswith(old):
            return "postgresql+psycopg://" + url[len(old) :]
    return url


def open_storage(url: str | None, *, heartbeat_interval: int | None = None):
    """An Optuna storage for ``url``: None (in memory), ``journal:PATH`` or an RDB URL.

    RDB storages get a heartbeat (``heartbeat_interval`` s, default ``$WORKBENCH_SEARCH_HEARTBEAT``
    or 10) so the trial of a killed worker is failed and its child run closed. ``postgresql://``
    becomes ``postgresql+psycopg://`` (psycopg 3 is what is installed).
    """
    import optuna

    url = normalize_storage(url)
    kind = storage_kind(url)
    if kind == "memory":
        return None
    if kind == "journal":
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    hb = heartbeat_interval or int(os.environ.get(HEARTBEAT_ENV, "10"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=hb, heartbeat_stale_trial_callback=close_stale_trial
            )
    except Exception as exc:
        raise SearchError(
            f"cannot open the study storage {redact_url(url)}: {exc}\n"
            "fix: check the URL (e.g. postgresql+psycopg://user:pw@host:5432/db) and that the "
            "database is reachable, or use journal:PATH on one machine"
        ) from exc


def redact_url(url: str | None) -> str:
    """The storage URL without its password, fit to log."""
    from workbench.core.secrets import mask_url

    if storage_kind(url) != "rdb":
        return mask_url(url or "memory")
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]  # unparsable: drop everything that could be a credential
