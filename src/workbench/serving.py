"""Load a model by alias and predict on raw rows; serve it over REST and follow its alias.

``load("models:/churn@champion")`` pins the alias to the version it names now and returns a
``LoadedModel`` whose ``predict_frame`` takes the dataset's own columns.

``serve(model_uri)`` (``workbench serve MODEL_URI``) is a small FastAPI app on MLflow's pyfunc,
run with uvicorn in the current environment and bound to 127.0.0.1. It speaks MLflow's
scoring protocol (``POST /invocations`` with ``dataframe_split``, ``dataframe_records``,
``instances`` or ``inputs``; ``GET /ping``, ``/health``, ``/version``). The input schema of the
model's signature is enforced: a missing column or a wrong type gets 422, a malformed body
400, each naming the problem, and the server keeps serving.

When the URI names an alias, a background thread re-resolves it every ``refresh_interval``
seconds, as the article's FastAPI model manager does, but: it loads a new model only when
the alias moved, loads the pinned version (so the version reported is the one loaded),
swaps model and version together in one step (a request never mixes two versions), and a
failed reload keeps the old model serving. Every response names the version that answered
(``model_version`` field and ``X-Model-Version`` header).

Example::

    with start_server("models:/churn@champion", refresh_interval=5) as server:
        requests.post(server.url + "/invocations", json={"dataframe_split": ...})
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger("workbench.serving")

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
VERSION_HEADER = "X-Model-Version"
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


class ServingError(RuntimeError):
    """The model cannot be loaded or served as asked; the message says what to do."""


class RequestError(ValueError):
    """A scoring request the server cannot answer; ``status`` is the HTTP code (4xx)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------- model references


@dataclass(frozen=True)
class ModelRef:
    """What a model URI names: a registry alias, a registry version, or anything else."""

    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None


def parse_model_uri(uri: str) -> ModelRef:
    """Split ``models:/name@alias`` and ``models:/name/3``; other URIs are taken as they are."""
    uri = uri.strip()
    if m := _ALIAS_URI.match(uri):
        return ModelRef(uri, name=m["name"], alias=m["alias"])
    if m := _VERSION_URI.match(uri):
        return ModelRef(uri, name=m["name"], version=m["version"])
    return ModelRef(uri)


def resolve(ref: ModelRef) -> ModelRef:
    """Pin an alias to the version it names now (``models:/name/<version>``)."""
    if not ref.follows_alias:
        return ref
    from mlflow.exceptions import MlflowException

    from workbench import store

    client = store.connect(activate=False)
    try:
        mv = client.get_model_version_by_alias(ref.name, ref.alias)
    except MlflowException as exc:
        raise ServingError(
            f"cannot resolve {ref.uri}: {exc.message}\n"
            f"fix: check the model name and alias (workbench.registry.list_versions({ref.name!r})), "
            "and that MLFLOW_TRACKING_URI points at the store that holds it"
        ) from exc
    return ModelRef(
        f"models:/{ref.name}/{mv.version}", name=ref.name, alias=ref.alias, version=str(mv.version)
    )


# ---------------------------------------------------------------- a loaded model


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model and where it came from; immutable, so it can be swapped atomically."""

    pyfunc: Any
    ref: ModelRef  # pinned: ``uri`` names exactly what was loaded
    loaded_at: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    )

    @property
    def version(self) -> str:
        """The registry version, else the logged model id, else the URI."""
        return self.ref.version or getattr(self.pyfunc.metadata, "model_id", None) or self.ref.uri

    @property
    def input_columns(self) -> list[str] | None:
        schema = self.pyfunc.metadata.get_input_schema()
        return schema.input_names() if schema is not None and schema.has_input_names() else None

    def _classifier(self):
        try:
            raw = self.pyfunc.get_raw_model()
        except (NotImplementedError, AttributeError):
            return None
        return raw if hasattr(raw, "predict_proba") and hasattr(raw, "classes_") else None

    def score(self, frame: pd.DataFrame) -> dict[str, Any]:
        """``{"predictions": [...], "probabilities": [...]}`` for raw rows.

        The pyfunc's ``predict`` enforces the signature's input schema; its errors come back
        as ``RequestError`` (422) naming the column. ``probabilities`` (of the positive class
        for a binary classifier, one list a row otherwise) is there when the model has them.
        """
        from mlflow.exceptions import MlflowException

        frame = _align(frame, self.pyfunc.metadata.get_input_schema())
        try:
            predictions = self.pyfunc.predict(frame)
        except MlflowException as exc:
            raise RequestError(422, "SCHEMA_MISMATCH", _schema_message(exc.message)) from exc
        except Exception as exc:  # the model itself failed on these rows
            raise RequestError(
                400, "MODEL_ERROR", f"the model could not score these rows: {exc}"
            ) from exc
        out: dict[str, Any] = {"predictions": _jsonable(predictions)}
        clf = self._classifier()
        if clf is not None:
            cols = self.input_columns
            proba = clf.predict_proba(frame[cols] if cols else frame)
            out["probabilities"] = proba[:, 1].tolist() if proba.shape[1] == 2 else proba.tolist()
        return out

    def predict_frame(self, rows: pd.DataFrame | list[dict] | dict[str, list]) -> pd.DataFrame:
        """The rows with ``prediction`` (and ``probability``) columns added."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        result = self.score(frame)
        out = frame.copy()
        out["prediction"] = result["predictions"]
        if "probabilities" in result and not isinstance(result["probabilities"][0], list):
            out["probability"] = result["probabilities"]
        return out


def _align(frame: pd.DataFrame, schema) -> pd.DataFrame:
    """Cast integer columns the schema declares as floating point (lossless, and MLflow
    refuses to do it for values other than 0/1)."""
    if schema is None or not schema.has_input_names():
        return frame
    casts = {}
    for spec in schema.inputs:
        name = getattr(spec, "name", None)
        kind = str(getattr(spec, "type", "")).lower()
        numeric_col = name in frame.columns and ("double" in kind or "float" in kind)
        col = frame[name] if numeric_col else None
        if col is not None and (
            pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col)
        ):
            casts[name] = "float64"
    return frame.astype(casts) if casts else frame


def _schema_message(message: str) -> str:
    """MLflow's schema errors repeat the whole input frame; keep the part naming the problem."""
    if message.startswith("Failed to enforce schema") and "Error: " in message:
        message = message.rsplit("Error: ", 1)[1]
    return f"input does not match the model's signature: {message.strip()[:2000]}"


def _jsonable(values) -> list:
    import numpy as np

    if isinstance(values, pd.DataFrame):
        return values.to_dict(orient="records")
    if isinstance(values, pd.Series):
        return values.tolist()
    return np.asarray(values).tolist()


def load(model_uri: str) -> LoadedModel:
    """Load a model for prediction on raw rows; an alias is pinned to its current version."""
    from workbench import models

    ref = resolve(parse_model_uri(model_uri))
    try:
        return LoadedModel(models.load_model(ref.uri), ref)
    except Exception as exc:
        raise ServingError(f"cannot load {ref.uri}: {exc}") from exc


# ---------------------------------------------------------------- following an alias


class ModelManager:
    """Holds the model being served and keeps it in step with its alias."""

    def __init__(self, model_uri: str, refresh_interval: float = 30.0):
        self.ref = parse_model_uri(model_uri)
        self.refresh_interval = max(0.1, float(refresh_interval))
        self._current = load(model_uri)  # a failure here is fatal: nothing to serve yet
        self.last_checked: str | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        logger.info("serving %s as version %s", model_uri, self._current.version)

    @property
    def current(self) -> LoadedModel:
        """The model to answer with (read once per request)."""
        return self._current

    def refresh(self) -> bool:
        """Reload when the alias moved; True when a new version now serves. Never raises:
        a failed reload is logged and the old model keeps serving."""
        if not self.ref.follows_alias:
            return False
        try:
            pinned = resolve(self.ref)
            self.last_checked = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            if pinned.version == self._current.ref.version:
                self.last_error = None
                return False
            new = load(pinned.uri)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error(
                "reload of %s failed; still serving version %s: %s",
                self.ref.uri,
                self._current.version,
                exc,
            )
            return False
        old, self._current = self._current, new
        self.last_error = None
        logger.info(
            "%s moved: now serving version %s (was %s)", self.ref.uri, new.version, old.version
        )
        return True

    def start(self) -> None:
        """Re-resolve the alias every ``refresh_interval`` seconds in a daemon thread."""
        if not self.ref.follows_alias or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.refresh_interval):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="workbench-model-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# ---------------------------------------------------------------- the REST app


def parse_request(body: bytes, content_type: str | None, schema) -> pd.DataFrame:
    """Turn a scoring request into a DataFrame, or raise ``RequestError`` saying what is wrong."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input

    mime = (content_type or "application/json").split(";")[0].strip().lower()
    if mime == "text/csv":
        import io

        try:
            return parse_csv_input(io.StringIO(body.decode("utf-8")), schema=schema)
        except (MlflowException, UnicodeDecodeError) as exc:
            raise RequestError(400, "BAD_REQUEST", f"cannot read the CSV body: {exc}") from exc
    if mime != "application/json":
        raise RequestError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"content type {mime!r} is not supported; send application/json or text/csv",
        )
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, "MALFORMED_JSON", f"the body is not valid JSON: {exc}") from exc
    keys = [k for k in FORMATS if isinstance(payload, dict) and k in payload]
    if len(keys) != 1:
        got = list(payload) if isinstance(payload, dict) else type(payload).__name__
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"the body must be a JSON object with exactly one of {', '.join(FORMATS)} (got {got}); e.g. "
            '{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}',
        )
    _check_types(keys[0], payload[keys[0]], schema)
    try:
        data = infer_and_parse_data({keys[0]: payload[keys[0]]}, schema)
    except MlflowException as exc:
        status = 422 if "signature" in exc.message or "convert" in exc.message else 400
        raise RequestError(
            status,
            "SCHEMA_MISMATCH" if status == 422 else "BAD_REQUEST",
            _schema_message(exc.message) if status == 422 else exc.message,
        ) from exc
    except Exception as exc:  # pandas complains about shapes and columns in many ways
        raise RequestError(400, "BAD_REQUEST", f"cannot read {keys[0]} as a table: {exc}") from exc
    if isinstance(data, dict | list):
        try:
            data = pd.DataFrame(data)
        except Exception as exc:
            raise RequestError(
                400, "BAD_REQUEST", f"cannot read {keys[0]} as a table: {exc}"
            ) from exc
    return data


_JSON_KINDS = {
    "string": (str,),
    "double": (int, float),
    "float": (int, float),
    "long": (int,),
    "integer": (int,),
    "boolean": (bool,),
}


def _check_types(fmt: str, body: Any, schema) -> None:
    """Refuse JSON values of the wrong kind for a column (a number where the signature says
    string, text where it says double): MLflow would silently cast the first."""
    if schema is None or not schema.has_input_names():
        return
    kinds = {}
    for spec in schema.inputs:
        kind = str(getattr(spec, "type", "")).lower().split(".")[-1]
        if getattr(spec, "name", None) and kind in _JSON_KINDS:
            kinds[spec.name] = kind
    if fmt == "dataframe_split" and isinstance(body, dict):
        columns = body.get("columns") or []
        rows = body.get("data") or []
        records = (dict(zip(columns, r, strict=False)) for r in rows if isinstance(r, list))
    elif fmt == "dataframe_records" and isinstance(body, list):
        records = (r for r in body if isinstance(r, dict))
    else:
        return
    for i, record in enumerate(records):
        for column, value in record.items():
            kind = kinds.get(column)
            if kind is None or value is None:
                continue
            ok = isinstance(value, _JSON_KINDS[kind]) and (
                kind == "boolean" or not isinstance(value, bool)
            )
            whole = kind in ("long", "integer") and isinstance(value, float) and value.is_integer()
            ok = ok or whole
            if not ok and not (kind in ("double", "float") and value in ("NaN", "nan")):
                raise RequestError(
                    422,
                    "SCHEMA_MISMATCH",
                    f"column {column!r} expects {kind} values, got {value!r} "
                    f"({type(value).__name__}) in row {i}",
                )


def _json_response(content: dict, status: int, model: LoadedModel):
    from fastapi.responses import Response
    from mlflow.utils.proto_json_utils import NumpyEncoder

    headers = {VERSION_HEADER: str(model.version), "X-Model-Uri": model.ref.uri}
    return Response(
        json.dumps(content, cls=NumpyEncoder),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def create_app(manager: ModelManager):
    """The FastAPI app: MLflow's scoring protocol plus the version that answered."""
    from fastapi import FastAPI, Request

    from workbench import __version__

    app = FastAPI(title="workbench model server", version=__version__)

    def about(model: LoadedModel) -> dict[str, Any]:
        return {
            "model_uri": manager.ref.uri,
            "model_name": model.ref.name,
            "model_version": model.version,
            "loaded_uri": model.ref.uri,
            "loaded_at": model.loaded_at,
        }

    @app.get("/ping")
    async def ping():
        return _json_response({"status": "ok"}, 200, manager.current)

    @app.get("/health")
    async def health():
        model = manager.current
        info = {
            "status": "ok",
            **about(model),
            "last_checked": manager.last_checked,
            "last_error": manager.last_error,
        }
        return _json_response(info, 200, model)

    @app.get("/version")
    async def version():
        import mlflow

        model = manager.current
        return _json_response(
            {"workbench": __version__, "mlflow": mlflow.__version__, **about(model)}, 200, model
        )

    async def invocations(request):
        model = manager.current  # one snapshot: this request is answered by one version
        body = await request.body()

        def work() -> dict[str, Any]:
            frame = parse_request(
                body, request.headers.get("content-type"), model.pyfunc.metadata.get_input_schema()
            )
            return model.score(frame)

        try:
            result = await asyncio.to_thread(work)
        except RequestError as exc:
            error = {"error_code": exc.code, "message": exc.message, "model_version": model.version}
            return _json_response(error, exc.status, model)
        result.update(model_name=model.ref.name, model_version=model.version)
        return _json_response(result, 200, model)

    # Annotations are strings under ``from __future__``; FastAPI needs the class itself to
    # inject the request, and fastapi is imported lazily, so it is attached here.
    invocations.__annotations__ = {"request": Request}
    app.post("/invocations")(invocations)

    return app


def serve(
    model_uri: str, *, host: str = "127.0.0.1", port: int = 8080, refresh_interval: float = 30.0
) -> int:
    """Serve ``model_uri`` until interrupted (``workbench serve``). Exit code 0 on a clean stop,
    1 when the model cannot be loaded."""
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        manager = ModelManager(model_uri, refresh_interval=refresh_interval)
    except ServingError as exc:
        print(f"workbench serve: {exc}", file=sys.stderr)
        return 1
    manager.start()
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach this address can use the model", host)
    try:
        uvicorn.run(create_app(manager), host=host, port=port, log_level="info")
    finally:
        manager.stop()
    return 0


# ---------------------------------------------------------------- a server in a subprocess


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``workbench serve`` subprocess; stop it with ``stop()`` or a ``with`` block."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        """What the server wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    model_uri: str,
    *,
    port: int | None = None,
    refresh_interval: float = 30.0,
    timeout: float = 120.0,
    log_path: str | Path | None = None,
) -> ServerProcess:
    """Start ``workbench serve`` on 127.0.0.1 in a subprocess and wait until it answers /ping.

    The child uses the same tracking store as this process. Raises ``ServingError`` with the
    server's log when it exits or does not answer within ``timeout`` seconds.
    """
    import urllib.error
    import urllib.request

    from workbench.config import get_settings

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="workbench-serve-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": get_settings().tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "serve",
        model_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--refresh-interval", str(refresh_interval)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    server = ServerProcess(proc, url, log_path)
    atexit.register(server.stop)  # a notebook kernel that exits takes its server with it
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServingError(
                f"workbench serve exited with code {proc.returncode}:\n{server.log()[-3000:]}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url + "/ping", timeout=2) as resp,
        ):
            if resp.status == 200:
                return server
        time.sleep(0.25)
    server.stop()
    raise ServingError(
        f"workbench serve did not answer on {url} within {timeout:g} s:\n{server.log()[-3000:]}"
    )
