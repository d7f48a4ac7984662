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
import uuid
from typing import TYPE_CHECKING, Any

from workbench.serve.model import LoadedModel, ModelManager, RequestError, ServingError
from workbench.serve.parsing import (  # noqa: F401  (FORMATS re-exported)
    DEFAULT_MAX_ROWS,
    FORMATS,
    parse_request,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

logger = logging.getLogger("workbench.serving")

VERSION_HEADER = "X-Model-Version"
MB = 1024 * 1024
DEFAULT_MAX_BODY_MB = 16


def _json_response(content: dict, status: int, model: LoadedModel, **headers: str):
    from fastapi.responses import Response
    from mlflow.utils.proto_json_utils import NumpyEncoder

    headers = {VERSION_HEADER: str(model.version), **headers}
    return Response(
        json.dumps(content, cls=NumpyEncoder),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def create_app(
    manager: ModelManager,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * MB,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> FastAPI:
    """The FastAPI app: MLflow's scoring protocol plus the version that answered, with a
    body limit (413 before parsing) and a row limit (413 before a table is built)."""
    from fastapi import FastAPI

    from workbench import __version__

    app = FastAPI(title="workbench model server", version=__version__)
    _add_status_routes(app, manager)
    _add_invocations(app, manager, max_body_bytes=max_body_bytes, max_rows=max_rows)
    return app


def _registry_uri(uri: str) -> str | None:
    """A registry or logged-model URI (safe to show); None for paths on the server's disk."""
    return uri if uri.startswith("models:/") else None


def _add_status_routes(app: FastAPI, manager: ModelManager) -> None:
    """``GET /ping``, ``/health`` (status and version, nothing else) and ``/version``."""
    from workbench import __version__

    @app.get("/ping")
    async def ping():
        return _json_response({"status": "ok"}, 200, manager.current)

    @app.get("/health")
    async def health():
        model = manager.current
        return _json_response({"status": "ok", "model_version": model.version}, 200, model)

    @app.get("/version")
    async def version():
        import mlflow

        model = manager.current
        about = {
            "workbench": __version__,
            "mlflow": mlflow.__version__,
            "model_name": model.ref.name,
            "model_version": model.version,
            "model_uri": _registry_uri(manager.ref.uri),
            "loaded_uri": _registry_uri(model.ref.uri),
            "loaded_at": model.loaded_at,
        }
        return _json_response(about, 200, model)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes:
    from ``Content-Length`` before anything is read, else while the chunks stream in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, "BAD_REQUEST", "the Content-Length header is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413,
        "BODY_TOO_LARGE",
        f"the request body is larger than this server's limit of {limit / MB:g} MB; send "
        "fewer rows a request, or start the server with a larger --max-body-mb",
    )


def _add_invocations(app: FastAPI, manager: ModelManager, *, max_body_bytes: int, max_rows: int):
    """``POST /invocations``: score the body with one model snapshot, off the event loop."""
    from fastapi import Request

    async def invocations(request):
        model = manager.current  # one snapshot: this request is answered by one version
        request_id = uuid.uuid4().hex[:12]
        try:
            body = await read_body(request, max_body_bytes)

            def work() -> dict[str, Any]:
                schema = model.pyfunc.metadata.get_input_schema()
                content_type = request.headers.get("content-type")
                return model.score(parse_request(body, content_type, schema, max_rows=max_rows))

            result = await asyncio.to_thread(work)
        except RequestError as exc:
            return _request_error(exc, model, request_id)
        except Exception:
            logger.exception("request %s: scoring failed", request_id)
            error = {
                "error_code": "INTERNAL_ERROR",
                "message": "the server could not score this request; the details are in the "
                f"server log under request id {request_id}",
                "request_id": request_id,
                "model_version": model.version,
            }
            return _json_response(error, 500, model)
        result.update(model_name=model.ref.name, model_version=model.version)
        return _json_response(result, 200, model)

    # Annotations are strings under ``from __future__``; FastAPI needs the class itself to
    # inject the request, and fastapi is imported lazily, so it is attached here.
    invocations.__annotations__ = {"request": Request}
    app.post("/invocations")(invocations)


def _request_error(exc: RequestError, model: LoadedModel, request_id: str):
    """A 4xx naming what to change; the underlying error goes to the log only."""
    logger.info(
        "request %s: %s %s: %s", request_id, exc.status, exc.code, exc.detail or exc.message
    )
    error = {
        "error_code": exc.code,
        "message": exc.message,
        "request_id": request_id,
        "model_version": model.version,
    }
    # A refused body may not have been read to its end: the connection cannot be reused.
    headers = {"Connection": "close"} if exc.status == 413 else {}
    return _json_response(error, exc.status, model, **headers)


def serve(
    model_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    refresh_interval: float = 30.0,
    trust_model: bool = False,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> int:
    """Serve ``model_uri`` until interrupted (``workbench serve``). Exit code 0 on a clean stop,
    1 when the model cannot be loaded (or is refused: ``trust_model`` loads it anyway).

    MLflow's own pickle loading is switched off for the process first: only the safe loader,
    or a load the operator trusted with ``--trust-model``, can deserialize a model.
    """
    import uvicorn

    from workbench.core.errors import UsageError
    from workbench.tracking import models

    if max_body_mb <= 0 or max_rows < 1:
        raise UsageError("--max-body-mb must be above 0 and --max-rows at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if trust_model:
        logger.warning("--trust-model: a model the safe loader refuses is loaded anyway")
    with models.pickle_forbidden():
        try:
            manager = ModelManager(model_uri, refresh_interval=refresh_interval, trust=trust_model)
        except ServingError as exc:
            print(f"workbench serve: {exc}", file=sys.stderr)
            return 1
        if host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("listening on %s: anyone who can reach this address can use it", host)
        app = create_app(manager, max_body_bytes=int(max_body_mb * MB), max_rows=max_rows)
        manager.start()
        try:
            uvicorn.run(app, host=host, port=port, log_level="info")
        finally:
            manager.stop()
    return 0
