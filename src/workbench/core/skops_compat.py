"""Every use of skops' private names, fenced in one place (tests/test_compat.py guards them).

Three speed-ups of saving a sklearn model with skops, each standing in for a public call
that gives the same result more slowly: writing the archive (``skops.io.dumps``), auditing
its types (``skops.io.get_untrusted_types``; on the schema still in memory, once per distinct
member of an ensemble's 400 trees), and letting MLflow's save reuse the archive
instead of dumping and loading it again (``skops.io.dump`` / ``skops.io.load``).

Writing and auditing a 400-tree model builds and drops some 150,000 small containers (the
schema as dicts, its JSON text parsed back, skops' audit nodes): both run with the cyclic
garbage collector paused (``workbench.core.collector``), so that none of them is promoted.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any
from zipfile import ZipFile

from workbench.core import collector


class _IndexedZip(ZipFile):
    """A ZipFile whose ``namelist()`` is a live view of its index, not a new list a call.

    skops asks ``name not in zip_file.namelist()`` before writing each array: a list built
    for every one of a 400-tree model's 1,200 arrays, then searched (quadratic). The view
    answers ``in`` from the ZipFile's own name index; the archive written is the same.
    """

    def namelist(self):  # type: ignore[override]
        return self.NameToInfo.keys()


def archive(model) -> tuple[bytes, str]:
    """The model as a skops archive, and its ``schema.json`` text (what the audit reads).

    Does what ``skops.io.dumps`` does with skops' private ``skops.io._persist.SaveContext``
    and ``get_state``, but writes the schema with compact JSON: ``dumps`` uses
    ``json.dumps(indent=2)``, Python's slow encoder path (about 0.9 s of a 150-tree boosting
    pipeline's 1 s). ``skops.io.load`` reads the result like its own. If skops changes the
    save context or the archive layout (protocol, ``_skops_version``), this raises or writes
    an archive ``skops.io.load`` refuses; tests/test_compat.py loads one back to catch it.
    Errors from skops (a type it cannot save) propagate unchanged.
    """
    payload, schema, _ = _write(model, audit=False)
    return payload, schema


def audited_archive(model) -> tuple[bytes, str, list[str]]:
    """``archive(model)`` and the types skops must be told to trust to load it (what
    ``untrusted_types`` says), audited on the schema while it is still in memory, each
    distinct ensemble member once (``_distinct_members``)."""
    payload, schema, unsafe = _write(model, audit=True)
    return payload, schema, unsafe if unsafe is not None else untrusted_types(payload, schema)


def _write(model, audit: bool) -> tuple[bytes, str, list[str] | None]:
    import io

    import skops
    from skops.io._persist import SaveContext, get_state

    buffer = io.BytesIO()
    unsafe = None
    with collector.paused(), _json_primitives(), _IndexedZip(buffer, "w") as zip_file:
        context = SaveContext(zip_file=zip_file)
        state = get_state(model, context)
        context.clear_memo()
        state["protocol"] = context.protocol
        state["_skops_version"] = skops.__version__
        schema, members = _dumps(state)
        zip_file.writestr("schema.json", schema)
        if audit:
            unsafe = _audit_distinct(state, members)
        del state, members  # freed here, while the collector is still paused
    return buffer.getvalue(), schema, unsafe


@contextmanager
def _json_primitives() -> Iterator[None]:
    """While skops writes a state, its ``json.dumps`` of a str, int, float, bool or None
    returns what ``json.dumps`` returns without building an encoder each call.

    skops' private ``skops.io._general.object_get_state`` tries ``json.dumps`` on every
    object it meets (20,000 in a 400-tree model, most of them a tree's scalar settings);
    for anything but those exact types the call goes to ``json.dumps`` itself. Swapped in
    for the block (under the save lock, so two saves never restore each other's swap).
    """
    import json
    import types

    import skops.io._general as general

    def dumps(obj, *args, **kwargs):
        kind = type(obj)
        if args or kwargs or kind not in _JSON_PRIMITIVES:
            return json.dumps(obj, *args, **kwargs)
        return _JSON_PRIMITIVES[kind](obj)

    with _SAVE_LOCK:
        original = general.json
        general.json = types.SimpleNamespace(**{**vars(json), "dumps": dumps})
        try:
            yield
        finally:
            general.json = original


def _json_float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


# json.dumps of exactly these types, as its C encoder writes them (ensure_ascii, allow_nan)
_JSON_PRIMITIVES = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
    float: _json_float,
}

_MEMBERS = 16  # a list of at least this many nodes is an ensemble's members


def _dumps(state: dict) -> tuple[str, list[tuple[Any, Any, Any, list[str]]]]:
    """``json.dumps(state)``, and each long list of nodes found in it with its items' JSON
    texts: ``(container, key, items, texts)``. The text is the same string: a list's JSON
    is its items' JSON joined by ``", "`` in brackets."""
    import json
    import uuid

    members: list[tuple[Any, Any, Any, list[str]]] = []
    stack: list[Any] = [state]
    while stack:
        node = stack.pop()
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if not isinstance(value, dict | list | tuple):  # skops keeps tuples of nodes too
                continue
            if (
                not isinstance(node, tuple)
                and isinstance(value, list | tuple)
                and len(value) >= _MEMBERS
                and all(isinstance(item, dict) for item in value)
            ):
                members.append((node, key, value, [json.dumps(item) for item in value]))
            else:
                stack.append(value)
    if not members:
        return json.dumps(state), members
    tokens = [f"\x00workbench-{uuid.uuid4().hex}-{i}" for i in range(len(members))]
    for (node, key, _, _), token in zip(members, tokens, strict=True):
        node[key] = token
    text = json.dumps(state)
    for (node, key, items, texts), token in zip(members, tokens, strict=True):
        text = text.replace(json.dumps(token), "[" + ", ".join(texts) + "]", 1)
        node[key] = items
    return text, members


# What tells two ensemble members apart without changing what the audit finds: object ids,
# array file names and JSON values (the audit reads none of them; it reads types and names).
_NOT_TYPES = re.compile(
    r'"__id__": \d+|"file": "[^"]*"|"content": "(?:[^"\\]|\\.)*", "is_json": true'
)


def _audit_distinct(state: dict, members: list[tuple[Any, Any, Any, list[str]]]):
    """The audit of ``untrusted_in_schema`` on ``state``, with each long list of nodes
    reduced to its distinct members: the unsafe set of a list is the union of its items'
    sets, and items whose JSON differs only in ids, file names and JSON values have the
    same. None if the audit of the reduced state fails (a cached node whose first
    occurrence was left out, or skops' internals moved): the caller audits it all."""
    for node, key, items, texts in members:
        distinct: dict[str, Any] = {}
        for item, text in zip(items, texts, strict=True):
            distinct.setdefault(_NOT_TYPES.sub("", text), item)
        node[key] = list(distinct.values())
    try:
        return _unsafe(state)
    except Exception:  # noqa: BLE001 - the full audit (or skops' public call) decides
        return None
    finally:
        for node, key, items, _ in members:
            node[key] = items


class _NoArrays:
    """Stands in for the archive while auditing: array bytes never decide a type."""

    def read(self, name: str) -> bytes:
        return b""


def untrusted_in_schema(schema: str) -> list[str]:
    """What ``skops.io.get_untrusted_types`` says of an archive, from its schema alone.

    The same audit (skops' private ``skops.io._audit.get_tree`` and ``get_unsafe_set`` with
    nothing trusted, on a ``skops.io._utils.LoadContext``) over the schema just written,
    without reopening the archive and reading back every array (about a third of the time
    for a 400-tree model). If skops changes those internals this raises; ``untrusted_types``
    then falls back to the public call.
    """
    import json

    with collector.paused():
        state = json.loads(schema)
        unsafe = _unsafe(state)
        del state  # freed here, while the collector is still paused
    return unsafe


def _unsafe(state: dict) -> list[str]:
    from skops.io._audit import get_tree
    from skops.io._utils import LoadContext

    context = LoadContext(src=_NoArrays(), protocol=state["protocol"])  # type: ignore[arg-type]
    return sorted(get_tree(state, context, trusted=None).get_unsafe_set())


def untrusted_types(payload: bytes, schema: str) -> list[str]:
    """The types skops must be told to trust to load ``payload``: the schema-only audit,
    or skops' public ``get_untrusted_types`` (exact too, slower) if its internals moved."""
    try:
        return untrusted_in_schema(schema)
    except Exception:  # noqa: BLE001 - private skops API moved: the public call is exact too
        import skops.io as sio

        return sorted(sio.get_untrusted_types(data=payload))


@dataclass
class Served:
    """What ``serialize_once`` did: archives written from memory, loads answered from it."""

    dumped: int = 0
    loaded: int = 0


_SAVE_LOCK = threading.RLock()


@contextmanager
def serialize_once(model, payload: bytes, trusted: list[str]) -> Iterator[Served]:
    """While MLflow saves ``model``, serialize it once and parse it never.

    ``mlflow.sklearn`` dumps the model with ``skops.io.dump``, loads the file straight back
    with ``skops.io.load`` to check the trusted types, and ``Model.log`` loads it a third
    time to check that the input example can be served. Here, swapped in for the duration,
    ``skops.io.dump`` of ``model`` writes ``payload`` (the archive already made), and
    ``skops.io.load`` of that very file with that very trusted list returns the model in
    memory: the trusted list was read from these bytes by skops' own auditor, so the check
    cannot fail, while the serving check still parses the example against the signature and
    predicts through MLflow's pyfunc wrapper. Any other object, file or call goes to skops
    unchanged, and both functions are restored on exit.

    Relies on MLflow calling ``skops.io.dump`` / ``skops.io.load`` through the module
    attribute at call time with these signatures; if it stops, saving just takes the slow
    path (``Served`` counts stay 0, which tests/test_compat.py asserts against).
    """
    import skops.io as sio

    _SAVE_LOCK.acquire()  # one save at a time: concurrent swaps would restore each other's
    original_dump, original_load = sio.dump, sio.load
    written: set[str] = set()
    served = Served()
    trusted_list = sorted(trusted)

    def dump(obj, file, **kwargs):
        if obj is not model or kwargs:
            return original_dump(obj, file, **kwargs)
        if hasattr(file, "write"):
            file.write(payload)
        else:
            Path(file).write_bytes(payload)
            written.add(os.path.realpath(file))
        served.dumped += 1
        return None

    def load(file, trusted=None, **kwargs):
        ours = (
            isinstance(file, str | os.PathLike)
            and os.path.realpath(file) in written
            and sorted(trusted or []) == trusted_list
            and not kwargs
        )
        if not ours:
            return original_load(file, trusted=trusted, **kwargs)
        served.loaded += 1
        return model

    sio.dump, sio.load = dump, load
    try:
        yield served
    finally:
        sio.dump, sio.load = original_dump, original_load
        _SAVE_LOCK.release()
