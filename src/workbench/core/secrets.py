"""Secrets never stored, named or printed in clear.

Two ways a secret shows itself: by its *name* (``db_password``, ``dbPassword``, ``apiToken``,
``AWS_SECRET_ACCESS_KEY``) and by its *value* (``postgresql://alice:s3cret@db/mlflow``). The
workbench masks both wherever it writes for people: run params and tags, run names and
labels, report file names, the parameters cell of a saved notebook, indexes and terminal
lines. The kernel still receives the real value; only what is written down is masked.

Example::

    >>> redact({"dbPassword": "hunter2", "db_url": "postgresql://bob:pw@db/x", "lr": 0.1})
    {'dbPassword': '***', 'db_url': 'postgresql://bob:***@db/x', 'lr': 0.1}
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

# Words that make a name secret on their own, and pairs that do together ("api key").
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token",
        "apikey", "auth", "credential", "credentials", "creds", "privatekey", "cookie",
        "bearer",
    }
)  # fmt: skip
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"),
     ("client", "secret"), ("signing", "key"), ("encryption", "key")}
)  # fmt: skip
# scheme://user:password@host -> scheme://user:***@host (the user name stays readable)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@'\"]*):(?P<pw>[^\s@/'\"]+)@")


def name_words(name: str) -> list[str]:
    """``dbPassword`` -> ``["db", "password"]``; ``AWS_SECRET_ACCESS_KEY`` -> its 4 words."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret(name: str) -> bool:
    """True when a name looks like it holds a secret (password, token, API key, ...)."""
    words = name_words(name)
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def mask_url(text: str) -> str:
    """Mask the password of every ``scheme://user:password@host`` in ``text``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)


def redact_value(name: str, value: Any) -> Any:
    """``***`` for a secret name; a string value with its URL passwords masked; else as is."""
    if is_secret(name):
        return REDACTED
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value("", v) for v in value)
    return value


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` fit to be written down: secret names and URL passwords masked."""
    return {k: redact_value(str(k), v) for k, v in params.items()}


def secret_values(params: Mapping[str, Any]) -> list[str]:
    """The clear texts that must never be written: values of secret names and URL passwords
    (for masking free text such as a terminal line or a file name)."""
    found: list[str] = []
    for k, v in params.items():
        if is_secret(str(k)) and v not in (None, ""):
            found.append(str(v))
        if isinstance(v, str):
            found += [m["pw"] for m in _URL_PASSWORD.finditer(v)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and each of ``secrets`` masked."""
    out = mask_url(str(text))
    for s in secrets:
        out = out.replace(s, REDACTED)
    return out
