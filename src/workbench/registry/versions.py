"""Registered versions and their aliases: register a logged model or a run's model, describe
and tag a version, point an alias at it, find the version holding an alias, load it, and
list every version with its aliases, tags and the source run's metrics.

The plain bookkeeping of the registry; the gated promotion and rollback built on it live
in ``registry``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.core import store
from workbench.registry.decisions import CHALLENGER, CHAMPION, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(name: str, alias: str = CHAMPION) -> str:
    """``models:/<name>@<alias>``, the URI that always means the version holding the alias."""
    return f"models:/{name}@{alias}"


def register(
    source: ModelInfo | str,
    name: str,
    *,
    description: str | None = None,
    tags: dict[str, Any] | None = None,
    alias: str | None = None,
    artifact_name: str = "model",
) -> ModelVersion:
    """Create a new version of ``name`` from a logged model or a run.

    ``source`` is a ``ModelInfo`` (what ``log_model`` returns), a ``models:/<model_id>`` URI,
    or a run id (its logged model called ``artifact_name`` is used). ``alias`` (e.g.
    ``"challenger"``) is set on the new version.
    """
    import mlflow

    client = store.connect()
    uri = source_uri(client, source, artifact_name)
    mv = mlflow.register_model(uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    if description:
        mv = client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def source_uri(client: MlflowClient, source: ModelInfo | str, artifact_name: str) -> str:
    if hasattr(source, "model_uri"):
        return str(source.model_uri)
    text = str(source)
    if text.startswith("models:/"):
        return text
    run_id = text
    if text.startswith("runs:/"):
        run_id, _, path = text[len("runs:/") :].partition("/")
        artifact_name = path or artifact_name
    if not _RUN_ID.match(run_id):
        raise RegistryError(
            f"cannot register {text!r}: give a ModelInfo from log_model, a models:/<model_id> URI "
            "or a run id"
        )
    run = client.get_run(run_id)
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    named = [m for m in found if m.name == artifact_name]
    if not named:
        names = ", ".join(sorted({m.name for m in found})) or "none"
        raise RegistryError(
            f"run {run_id} has no logged model named {artifact_name!r} (its models: {names}); "
            "pass artifact_name= or the ModelInfo that log_model returned"
        )
    return max(named, key=lambda m: m.creation_timestamp).model_uri


def describe(name: str, version: str | int, description: str) -> ModelVersion:
    """Set the description of a version (shown in the MLflow UI)."""
    return store.connect().update_model_version(name, str(version), description=description)


def tag(name: str, version: str | int, **tags: Any) -> None:
    """Set tags on a version (values become strings)."""
    client = store.connect()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


# ---------------------------------------------------------------- aliases and loading


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` at ``version``."""
    store.connect().set_registered_model_alias(name, alias, str(version))


def set_challenger(name: str, version: str | int) -> None:
    """Mark ``version`` as the challenger (the candidate ``promote`` reviews by default)."""
    set_alias(name, CHALLENGER, version)


def get_version(name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version holds it."""
    from mlflow.exceptions import MlflowException

    client = store.connect()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def aliases(name: str) -> dict[str, str]:
    """``{alias: version}`` of a registered model."""
    return {a: str(v) for a, v in store.connect().get_registered_model(name).aliases.items()}


def load(name: str, alias: str = CHAMPION, *, trust: bool = False):
    """Load ``models:/<name>@<alias>`` as a pyfunc model (predicts on raw rows).

    A model that could run code when loaded (a pickle, a pyfunc ``PythonModel``, skops types
    off the allow-list) is refused with ``ModelRefused`` unless ``trust=True`` (logged).
    """
    from workbench.tracking import models

    require_alias(name, alias)
    return models.load_model(model_uri(name, alias), trust=trust)


def load_sklearn(name: str, alias: str = CHAMPION, *, trust: bool = False):
    """Load the sklearn pipeline behind ``models:/<name>@<alias>`` (for ``predict_proba``),
    under the same check as ``load``."""
    from workbench.tracking import models

    require_alias(name, alias)
    return models.load_sklearn(model_uri(name, alias), trust=trust)


def require_alias(name: str, alias: str) -> ModelVersion:
    mv = get_version(name, alias)
    if mv is None:
        have = ", ".join(f"{a}=v{v}" for a, v in aliases(name).items()) or "none"
        raise RegistryError(
            f"model {name!r} has no version with alias {alias!r} (aliases: {have}); "
            f"set one with workbench.registry.set_alias({name!r}, {alias!r}, VERSION) or promote()"
        )
    return mv


def list_versions(name: str) -> pd.DataFrame:
    """All versions of ``name``: aliases, description, source run, tags and the run's metrics.

    One row a version (oldest first); tags appear as ``tags.<key>`` columns and the source
    run's metrics as ``metrics.<key>`` columns, as in ``mlflow.search_runs``.
    """
    from mlflow.exceptions import MlflowException

    client = store.connect()
    try:
        by_version: dict[str, list[str]] = {}
        for alias, v in client.get_registered_model(name).aliases.items():
            by_version.setdefault(str(v), []).append(alias)
    except MlflowException as exc:
        raise RegistryError(f"no registered model named {name!r}: {exc.message}") from exc
    rows = []
    metrics_cache: dict[str, dict[str, float]] = {}
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.run_id and mv.run_id not in metrics_cache:
            try:
                metrics_cache[mv.run_id] = dict(client.get_run(mv.run_id).data.metrics)
            except MlflowException:
                metrics_cache[mv.run_id] = {}
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ", ".join(sorted(by_version.get(str(mv.version), []))),
            "status": mv.status,
            "created": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True),
            "description": mv.description or "",
            "run_id": mv.run_id or "",
            "model_id": model_id_of(mv),
        }
        row.update({f"tags.{k}": v for k, v in sorted(mv.tags.items())})
        row.update(
            {f"metrics.{k}": v for k, v in sorted(metrics_cache.get(mv.run_id or "", {}).items())}
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    extra = sorted(c for c in frame.columns if c.startswith(("tags.", "metrics.")))
    ordered = [c for c in frame.columns if c not in extra] + [
        c for c in extra if c.startswith("tags.")
    ]
    ordered += [c for c in extra if c.startswith("metrics.")]
    return frame[ordered].sort_values("version", ignore_index=True)


def model_id_of(mv: ModelVersion) -> str:
    """The logged model behind a version (MLflow 3 keeps it in ``source`` as models:/<id>)."""
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    source = mv.source or ""
    return source[len("models:/") :] if source.startswith("models:/m-") else ""
