"""``workbench serve``: a REST scoring app on MLflow pyfunc that follows a registry alias.

It loads only what the safe loader accepts (skops with exact allow-listed types, or xgboost's
own format; ``--trust-model`` loads anything else, logged), with MLflow's pickle loading off for
the process. A request body over ``--max-body-mb`` (16) or more than ``--max-rows`` (100,000)
rows gets 413; errors carry no exception text; ``/health`` gives status and version only.
"""

from workbench.serve.app import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_ROWS  # noqa: F401
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
    "DEFAULT_MAX_BODY_MB",
    "DEFAULT_MAX_ROWS",
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
