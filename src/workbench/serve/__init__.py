"""``workbench serve``: a REST scoring app on MLflow pyfunc that follows a registry alias."""

from workbench.serve.process import (  # noqa: F401
    FORMATS,
    VERSION_HEADER,
    LoadedModel,
    ModelManager,
    ModelRef,
    RequestError,
    ServerProcess,
    ServingError,
    create_app,
    free_port,
    load,
    parse_model_uri,
    parse_request,
    resolve,
    serve,
    start_server,
)

__all__ = [
    "FORMATS",
    "VERSION_HEADER",
    "LoadedModel",
    "ModelManager",
    "ModelRef",
    "RequestError",
    "ServerProcess",
    "ServingError",
    "create_app",
    "free_port",
    "load",
    "parse_model_uri",
    "parse_request",
    "resolve",
    "serve",
    "start_server",
]
