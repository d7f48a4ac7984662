"""Every use of skops' private names, fenced in one place (tests/test_compat.py guards them).

Three speed-ups of saving a sklearn model with skops, each standing in for a public call
that gives the same result more slowly: writing the archive (``skops.io.dumps``), auditing
its types (``skops.io.get_untrusted_types``), and letting MLflow's save reuse the archive
instead of dumping and loading it again (``skops.io.dump`` / ``skops.io.load``).

Writing and auditing a 400-tree model builds and drops some 150,000 small containers (the
schema as dicts, its JSON text parsed back, skops' audit nodes): both run with the cyclic
garbage collector paused (``workbench.core.collector``), so that none of them is promoted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    import io
    import json

    import skops
    from skops.io._persist import SaveContext, get_state

    buffer = io.BytesIO()
    with collector.paused(), _IndexedZip(buffer, "w") as zip_file:
        context = SaveContext(zip_file=zip_file)
        state = get_state(model, context)
        context.clear_memo()
        state["protocol"] = context.protocol
        state["_skops_version"] = skops.__version__
        schema = json.dumps(state)
        del state  # freed here, while the collector is still paused
        zip_file.writestr("schema.json", schema)
    return buffer.getvalue(), schema


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

    from skops.io._audit import get_tree
    from skops.io._utils import LoadContext

    with collector.paused():
        state = json.loads(schema)
        context = LoadContext(src=_NoArrays(), protocol=state["protocol"])  # type: ignore[arg-type]
        tree = get_tree(state, context, trusted=None)
        unsafe = sorted(tree.get_unsafe_set())
        del state, tree  # freed here, while the collector is still paused
    return unsafe


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
