"""The model side of serving: what a model URI names, a loaded model that scores raw rows,
and the manager that keeps the served model in step with its alias.

``workbench.serving`` re-exports everything public here; see its docstring for the whole story.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

logger = logging.getLogger("workbench.serving")

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


class ServingError(RuntimeError):
    """The model cannot be loaded or served as asked; the message says what to do."""


class RequestError(ValueError):
    """A scoring request the server cannot answer; ``status`` is the HTTP code (4xx).

    ``message`` goes to the client and says what to change; ``detail`` (the underlying error,
    when there is one) goes to the server log only.
    """

    def __init__(self, status: int, code: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


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

    from workbench.core import store

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
        """The registry version, else the logged model id, else the URI; a folder on the
        server's disk is shown as ``local`` (clients see this, and paths are not theirs)."""
        uri = self.ref.uri
        shown = uri if uri.startswith(("models:/", "runs:/")) else "local"
        return self.ref.version or getattr(self.pyfunc.metadata, "model_id", None) or shown

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
            raise RequestError(422, "SCHEMA_MISMATCH", schema_message(exc.message)) from exc
        except Exception as exc:  # the model itself failed on these rows
            raise RequestError(
                400,
                "MODEL_ERROR",
                "the model could not score these rows",
                detail=f"{type(exc).__name__}: {exc}",
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


def schema_message(message: str) -> str:
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


def load(model_uri: str, *, trust: bool = False) -> LoadedModel:
    """Load a model for prediction on raw rows; an alias is pinned to its current version.

    The safe loader decides (``workbench.models.load_model``): a model that could run code
    when loaded is refused unless ``trust`` (``--trust-model``), which is logged.
    """
    from workbench.tracking import models

    ref = resolve(parse_model_uri(model_uri))
    try:
        return LoadedModel(models.load_model(ref.uri, trust=trust), ref)
    except Exception as exc:
        raise ServingError(f"cannot load {ref.uri}: {exc}") from exc


# ---------------------------------------------------------------- following an alias


class ModelManager:
    """Holds the model being served and keeps it in step with its alias."""

    def __init__(self, model_uri: str, refresh_interval: float = 30.0, *, trust: bool = False):
        self.ref = parse_model_uri(model_uri)
        self.refresh_interval = max(0.1, float(refresh_interval))
        self.trust = trust
        self._current = load(model_uri, trust=trust)  # a failure here is fatal: nothing to serve
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
            new = load(pinned.uri, trust=self.trust)
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
