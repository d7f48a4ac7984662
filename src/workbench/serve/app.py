"""The REST side of serving: MLflow's scoring protocol as a FastAPI app, the parsing and
type checks of its requests, and ``serve`` (``workbench serve``) running it under uvicorn.

``workbench.serve`` re-exports everything public here; fastapi and uvicorn are imported
only when an app is built or served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.serve.model import (
    LoadedModel,
    ModelManager,
    RequestError,
    ServingError,
    schema_message,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("workbench.serving")

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
VERSION_HEADER = "X-Model-Version"


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
            schema_message(exc.message) if status == 422 else exc.message,
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


def create_app(manager: ModelManager) -> FastAPI:
    """The FastAPI app: MLflow's scoring protocol plus the version that answered."""
    from fastapi import FastAPI

    from workbench import __version__

    app = FastAPI(title="workbench model server", version=__version__)
    _add_status_routes(app, manager)
    _add_invocations(app, manager)
    return app


def _about(manager: ModelManager, model: LoadedModel) -> dict[str, Any]:
    """Which model the server follows and which version it loaded, and when."""
    return {
        "model_uri": manager.ref.uri,
        "model_name": model.ref.name,
        "model_version": model.version,
        "loaded_uri": model.ref.uri,
        "loaded_at": model.loaded_at,
    }


def _add_status_routes(app: FastAPI, manager: ModelManager) -> None:
    """``GET /ping``, ``/health`` (with the last alias check) and ``/version``."""
    from workbench import __version__

    @app.get("/ping")
    async def ping():
        return _json_response({"status": "ok"}, 200, manager.current)

    @app.get("/health")
    async def health():
        model = manager.current
        info = {
            "status": "ok",
            **_about(manager, model),
            "last_checked": manager.last_checked,
            "last_error": manager.last_error,
        }
        return _json_response(info, 200, model)

    @app.get("/version")
    async def version():
        import mlflow

        model = manager.current
        return _json_response(
            {"workbench": __version__, "mlflow": mlflow.__version__, **_about(manager, model)},
            200,
            model,
        )


def _add_invocations(app: FastAPI, manager: ModelManager) -> None:
    """``POST /invocations``: score the body with one model snapshot, off the event loop."""
    from fastapi import Request

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
