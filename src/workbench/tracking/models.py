"""Fast, safe model logging and loading.

Two facts measured on MLflow 3.17 drive this module:

* ``mlflow.sklearn.log_model`` infers requirements by starting a subprocess that imports the
  model (about 6.6 s a call); passing ``pip_requirements`` taken from the installed versions
  brings that to about 0.2 s.
* sklearn models are saved with skops, which refuses types it does not trust; a
  GradientBoosting pipeline fails to log unless its exact trusted types are given. We
  compute that exact list from the model itself; we never fall back to pickle silently.
* skops writes its schema with indented JSON (Python's slow encoder) and each ensemble tree
  carries a 624-integer random state: we serialize a compact copy once, with the fast
  encoder, and hand those bytes to MLflow's save; its two checks that load the file back
  (trusted types, serving the input example) get the model in memory instead (skops'
  internals this needs are fenced in ``workbench.core.skops_compat``).

Loading never runs code a model brought: ``load_model`` / ``load_sklearn`` (from
``workbench.tracking.loading``, re-exported here) download the model once, check that copy's
``MLmodel`` (skops with exact allow-listed types, or xgboost's native format) and load that same
copy; anything else is refused unless the caller passes ``trust=True`` (logged).

Example::

    info = log_model(pipe, split.X_val, registered_model_name="churn")
    model = load_model(info.model_uri)
    model.predict(raw_rows)
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd

from workbench.core import skops_compat
from workbench.tracking.loading import (  # noqa: F401  (re-exported: notebooks, registry, serve)
    TRUSTED_TYPES,
    XGBOOST_CLASSES,
    ModelRefused,
    check_loadable,
    check_trusted_types,
    load_model,
    load_sklearn,
    pickle_deserialization,
    pickle_forbidden,
)

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

SIGNATURE_ROWS = 500
BASE_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


class ModelLoggingError(RuntimeError):
    """The model cannot be saved or loaded safely; the message says what to do."""


def pinned(packages: Iterable[str]) -> list[str]:
    """``name==version`` for each installed package (no inference subprocess)."""
    return [f"{name}=={v}" for name in packages if (v := _installed(name))]


@functools.lru_cache(maxsize=64)
def _installed(name: str) -> str | None:
    """The installed version of ``name``, looked up once a process (each lookup scans the
    environment's package metadata); None when it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def requirements_for(model) -> list[str]:
    """Pinned requirements of a sklearn model or pipeline, plus xgboost when it uses it."""
    packages = list(BASE_REQUIREMENTS)
    if _uses_module(model, "xgboost"):
        packages.append("xgboost")
    return pinned(packages)


def _uses_module(model, module: str) -> bool:
    parts = [model]
    if hasattr(model, "steps"):
        parts += [step for _, step in model.steps]
    return any(type(p).__module__.split(".")[0] == module for p in parts)


def skops_bytes(model) -> bytes:
    """The model as a skops archive, written with the fast JSON encoder.

    ``skops.io.dumps`` writes its schema with ``json.dumps(indent=2)``, which takes Python's
    slow encoder path (about 0.9 s of a 150-tree boosting pipeline's 1 s); the compact
    encoder gives the same archive, readable by ``skops.io.load``, several times faster.
    """
    return skops_archive(model)[0]


def skops_archive(model) -> tuple[bytes, str]:
    """The skops archive and its ``schema.json`` text (the schema is what the audit reads);
    a model skops cannot save raises ``ModelLoggingError`` with the fix."""
    return _saved(skops_compat.archive, model)


def _audited_archive(model) -> tuple[bytes, list[str]]:
    """The skops archive and the exact types to trust to load it back."""
    payload, _, trusted = _saved(skops_compat.audited_archive, model)
    return payload, trusted


def _saved(save, model):
    try:
        return save(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix attached
        raise ModelLoggingError(
            f"skops cannot serialize {type(model).__name__}: {exc}\n"
            "fix: use estimators skops supports, or log this model yourself with "
            "mlflow.sklearn.log_model(..., serialization_format='cloudpickle') knowing that "
            "loading a pickle runs arbitrary code."
        ) from exc


def trusted_types(model, payload: bytes | None = None) -> list[str]:
    """The exact types skops must be told to trust to load this model back."""
    import skops.io as sio

    return sorted(sio.get_untrusted_types(data=payload or skops_bytes(model)))


def compact(model):
    """A copy of ``model`` whose fitted trees drop the random generator that grew them.

    Each tree of a fitted sklearn ensemble keeps a ``RandomState`` (624 integers of state)
    that prediction never uses; skops writes every one out as JSON, which doubles the time
    to save a boosting model. The copy shares everything else with the original (nothing is
    refitted or changed in place) and predicts exactly the same.
    """
    import copy

    import numpy as np

    def strip(estimator):
        trees = getattr(estimator, "estimators_", None)
        if trees is None or not any(
            isinstance(getattr(t, "random_state", None), np.random.RandomState)
            for t in np.ravel(trees)[:1]
        ):
            return estimator
        lean = copy.copy(estimator)
        stripped = [copy.copy(t) for t in np.ravel(trees)]
        for t in stripped:
            t.random_state = None
        if isinstance(trees, np.ndarray):
            new = np.empty(trees.shape, dtype=object)
            new.ravel()[:] = stripped
            lean.estimators_ = new
        else:
            lean.estimators_ = stripped
        return lean

    if hasattr(model, "steps"):
        last = strip(model.steps[-1][1])
        if last is model.steps[-1][1]:
            return model
        lean = copy.copy(model)
        lean.steps = [*model.steps[:-1], (model.steps[-1][0], last)]
        return lean
    return strip(model)


def _own_model_loadable():
    """``pickle_deserialization(True)`` when this process refuses pickles, else nothing (so a
    caller already inside it is not blocked on its lock)."""
    import contextlib
    import os

    from workbench.tracking.loading import PICKLE_ENV

    if os.environ.get(PICKLE_ENV, "").strip().lower() in ("false", "0"):
        return pickle_deserialization(True)
    return contextlib.nullcontext()


def log_model(
    model,
    input_example: pd.DataFrame,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    extra_requirements: Iterable[str] = (),
    tags: dict[str, str] | None = None,
) -> ModelInfo:
    """Log a fitted sklearn model or pipeline to the active run, quickly and safely.

    The signature is inferred from ``input_example`` (raw rows) and the model's
    predictions; requirements are pinned from the installed versions; the model is saved
    with skops and exactly the types it needs trusted. With ``registered_model_name`` a
    new registry version is created from it.
    """
    import mlflow
    from mlflow.models import infer_signature

    from workbench.tracking.runs import settle

    settle()  # MLflow copies the run's params to the logged model: they must all be there
    example = input_example.head(5)
    # The signature comes from more rows than the example shows, so that a column with the
    # odd missing value is marked optional rather than required.
    sample = input_example.head(SIGNATURE_ROWS)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; the schema keeps the
        # dataset's own types, since MLflow refuses to cast int64 input to a double column.
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(sample, model.predict(sample))
    lean = compact(model)
    payload, trusted = _audited_archive(lean)
    # MLflow loads what it saved back to check it; a process that refuses pickles (a
    # `workbench run` kernel) would refuse that too and skip the serving check with a warning.
    # Those loads get the model in memory (serialize_once): nothing foreign is read.
    with skops_compat.serialize_once(lean, payload, trusted), _own_model_loadable():
        return mlflow.sklearn.log_model(
            lean,
            name=name,
            serialization_format="skops",
            skops_trusted_types=trusted,
            pip_requirements=[*requirements_for(model), *extra_requirements],
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
            tags=tags,
        )
