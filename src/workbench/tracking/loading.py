"""Loading a model without running code it brought.

A model's files decide what loading it does: a cloudpickled ``PythonModel`` or estimator runs
whatever its pickle says, a skops archive trusts the types its own ``MLmodel`` file lists, a
``code`` folder lands on ``sys.path``. So one function, ``check_loadable``, reads the
``MLmodel`` of a downloaded copy and lets through only what cannot run code:

* ``python_function`` with ``loader_module: mlflow.sklearn`` and a ``sklearn`` flavour saved
  with an explicit ``serialization_format: skops`` whose ``skops_trusted_types`` are each on
  ``TRUSTED_TYPES`` (exact names, no prefixes);
* ``python_function`` with ``loader_module: mlflow.xgboost`` and xgboost's own format
  (``.ubj`` / ``.json``) for a model class on ``XGBOOST_CLASSES``.

``load_model`` and ``load_sklearn`` download once, check that copy and load that same copy:
skops reads the archive with the checked list (MLflow's own loader is not involved, so the
process may keep ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` false, as ``workbench serve`` does).
Anything else is refused with ``ModelRefused``, saying why and how to load it deliberately:
``trust=True`` here (``--trust-model`` for ``workbench serve``), which is logged as a warning
naming the model and hands the copy to MLflow's loader with pickles allowed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("workbench.models")

PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"

# Types a skops archive of a workbench model may ask to trust, beyond skops' own defaults.
# Exact names only: a prefix such as ``builtins.`` would admit ``builtins.eval``.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.metrics._scorer._PassthroughScorer",
        "sklearn.model_selection._split.KFold",
        "sklearn.model_selection._split.StratifiedKFold",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.tree._tree.Tree",
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
    }
)
# Model classes xgboost's native format may be loaded into (MLflow imports the class by name).
XGBOOST_CLASSES = frozenset(
    {
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
        "xgboost.sklearn.XGBRFClassifier",
        "xgboost.sklearn.XGBRFRegressor",
        "xgboost.sklearn.XGBRanker",
    }
)
XGBOOST_FORMATS = {"ubj": ".ubj", "json": ".json"}
PREDICT_FNS = ("predict", "predict_proba")

_PICKLE_LOCK = threading.Lock()


class ModelRefused(RuntimeError):
    """The model could run code when loaded; the message says why and how to load it anyway."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Loadable:
    """What ``check_loadable`` found safe to load, and how."""

    kind: str  # "skops" or "xgboost"
    directory: Path
    data_path: Path  # the archive or the xgboost file, inside ``directory``
    trusted: tuple[str, ...] = ()
    predict_fn: str = "predict"
    meta: Any = field(default=None, compare=False)  # mlflow.models.Model


def refusal(model_uri: str, why: str) -> ModelRefused:
    """A ``ModelRefused`` naming the model, the reason and the deliberate way to load it."""
    return ModelRefused(
        f"refused to load {model_uri}: {why}. Loading it could run code it brings.\n"
        "fix: save it with workbench.models.log_model (skops, checked types); or, if you trust "
        "its source, load it deliberately: `workbench serve MODEL_URI --trust-model`, or "
        "trust=True in workbench.models.load_model / load_sklearn and workbench.registry.load "
        "(the trusted load is logged)",
        reason=why,
    )


def check_loadable(local_dir: str | Path, model_uri: str | None = None) -> Loadable:
    """Decide whether the model in ``local_dir`` (a downloaded copy) loads without running
    code it brought; ``ModelRefused`` says why not. Nothing is deserialized here."""
    from mlflow.models import Model

    directory = Path(local_dir).resolve()
    uri = model_uri or str(directory)
    mlmodel = directory / "MLmodel"
    if not mlmodel.is_file():
        raise refusal(uri, "it has no MLmodel file")
    try:
        meta = Model.load(str(mlmodel))  # YAML safe_load: reading it runs nothing
    except Exception as exc:  # noqa: BLE001 - any unreadable MLmodel is a refusal
        raise refusal(uri, f"its MLmodel file cannot be read ({type(exc).__name__})") from exc
    flavors = meta.flavors or {}
    pyfunc = flavors.get("python_function")
    if not isinstance(pyfunc, dict):
        raise refusal(uri, "it has no python_function flavour")
    if any(isinstance(conf, dict) and conf.get("code") for conf in flavors.values()):
        raise refusal(uri, "it brings code (code_paths) that loading would put on sys.path")
    if (meta.metadata or {}).get("mlflow.model.isExternal"):
        raise refusal(uri, "its files live outside the model directory")
    loader = pyfunc.get("loader_module")
    if "python_model" in pyfunc or loader == "mlflow.pyfunc.model":
        raise refusal(uri, "it is a pyfunc PythonModel saved with cloudpickle")
    if pyfunc.get("predict_fn", "predict") not in PREDICT_FNS:
        raise refusal(
            uri, f"its predict_fn {_shown(pyfunc['predict_fn'])} is not one of {PREDICT_FNS}"
        )
    if loader == "mlflow.sklearn":
        return _check_skops(uri, directory, flavors, meta)
    if loader == "mlflow.xgboost":
        return _check_xgboost(uri, directory, flavors, meta)
    raise refusal(
        uri, f"its loader_module {_shown(loader)} is not mlflow.sklearn or mlflow.xgboost"
    )


def _shown(value: Any) -> str:
    """A value read from the model's files, as a message may quote it (short)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_skops(uri: str, directory: Path, flavors: dict, meta) -> Loadable:
    """A sklearn flavour saved with skops, every trusted type on ``TRUSTED_TYPES``."""
    sk = flavors.get("sklearn")
    if not isinstance(sk, dict):
        raise refusal(uri, "its loader is mlflow.sklearn but it has no sklearn flavour")
    fmt = sk.get("serialization_format")
    if fmt != "skops":
        said = "no serialization_format (MLflow reads that as pickle)" if fmt is None else fmt
        raise refusal(uri, f"it is saved as {said}, not skops")
    types = sk.get("skops_trusted_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise refusal(uri, "its skops_trusted_types is not a list of type names")
    bad = sorted(t for t in types if t not in TRUSTED_TYPES)
    if bad:
        listed = ", ".join(_shown(t)[1:-1] for t in bad[:10])
        raise refusal(uri, f"it asks skops to trust types outside the allow-list: {listed}")
    pyfunc = flavors["python_function"]
    if pyfunc.get("model_path") != sk.get("pickled_model"):
        raise refusal(uri, "its python_function and sklearn flavours name different files")
    data = _inside(uri, directory, sk.get("pickled_model"))
    predict_fn = pyfunc.get("predict_fn", "predict")
    return Loadable("skops", directory, data, tuple(types), predict_fn, meta)


def _check_xgboost(uri: str, directory: Path, flavors: dict, meta) -> Loadable:
    """xgboost's own file format (no pickle), loaded into a class on ``XGBOOST_CLASSES``."""
    xgb = flavors.get("xgboost")
    if not isinstance(xgb, dict):
        raise refusal(uri, "its loader is mlflow.xgboost but it has no xgboost flavour")
    model_class = xgb.get("model_class", "xgboost.core.Booster")
    if model_class not in XGBOOST_CLASSES:
        raise refusal(
            uri, f"its xgboost model_class {_shown(model_class)} is not on the allow-list"
        )
    suffix = XGBOOST_FORMATS.get(xgb.get("model_format", "xgb"))
    data_name = str(xgb.get("data") or "")
    if suffix is None or not data_name.endswith(suffix):
        raise refusal(uri, "its xgboost file is not in xgboost's native .ubj or .json format")
    if flavors["python_function"].get("data") != data_name:
        raise refusal(uri, "its python_function and xgboost flavours name different files")
    return Loadable(
        "xgboost", directory, _inside(uri, directory, data_name), (model_class,), meta=meta
    )


def _inside(uri: str, directory: Path, name: Any) -> Path:
    """``directory / name`` when that is a file inside ``directory`` (no ``..``, no links out)."""
    if not isinstance(name, str) or not name:
        raise refusal(uri, "its MLmodel names no model file")
    path = (directory / name).resolve()
    if not path.is_relative_to(directory) or not path.is_file():
        raise refusal(uri, f"its model file {name!r} is not a file inside the model directory")
    return path


# ---------------------------------------------------------------- one copy: check, then load


@contextmanager
def downloaded(model_uri: str, *, keep: bool = False) -> Iterator[Path]:
    """The model's files, downloaded once into a fresh temporary folder (removed on exit
    unless ``keep``: a trusted pyfunc may read its artifacts after loading)."""
    import mlflow

    folder = tempfile.mkdtemp(prefix="workbench-model-")
    try:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def pickle_deserialization(allowed: bool) -> Iterator[None]:
    """Set ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` for the duration, one thread at a time
    (the lock is held throughout: for a load that needs MLflow's own loader)."""
    with _PICKLE_LOCK:
        before = _set_pickle_env("true" if allowed else "false")
        try:
            yield
        finally:
            _set_pickle_env(before)


@contextmanager
def pickle_forbidden() -> Iterator[None]:
    """MLflow's own loaders refuse pickles in this process for the duration (MLflow 3.17 allows
    them by default); ``workbench serve`` serves inside this. The lock is taken only to change
    the variable, so a trusted load inside can still allow pickles for its own call."""
    with _PICKLE_LOCK:
        before = _set_pickle_env("false")
    try:
        yield
    finally:
        with _PICKLE_LOCK:
            _set_pickle_env(before)


def _set_pickle_env(value: str | None) -> str | None:
    """Set (or, for None, remove) the variable; return what it was."""
    before = os.environ.get(PICKLE_ENV)
    if value is None:
        os.environ.pop(PICKLE_ENV, None)
    else:
        os.environ[PICKLE_ENV] = value
    return before


def load_model(model_uri: str, *, trust: bool = False):
    """Load a model as an MLflow pyfunc model (``.predict`` on raw rows), refusing any model
    that could run code when loaded unless ``trust`` (logged)."""
    return _load(model_uri, trust=trust, raw=False)


def load_sklearn(model_uri: str, *, trust: bool = False):
    """Load the fitted estimator itself (for ``predict_proba``), under the same check."""
    return _load(model_uri, trust=trust, raw=True)


def check_trusted_types(model_uri: str) -> list[str]:
    """The types the model asks to trust, once ``check_loadable`` accepted it (for display)."""
    with downloaded(model_uri) as local:
        return list(check_loadable(local, model_uri).trusted)


def _load(model_uri: str, *, trust: bool, raw: bool):
    with downloaded(model_uri, keep=trust) as local:
        try:
            found = check_loadable(local, model_uri)
        except ModelRefused as refused:
            if not trust:
                raise
            return _load_trusted(model_uri, local, refused.reason, raw=raw)
        return _load_checked(found, raw=raw)


def _load_checked(found: Loadable, *, raw: bool):
    """Load what ``check_loadable`` accepted, from that very copy."""
    if found.kind == "xgboost":
        import mlflow

        folder = str(found.directory)  # a local path: MLflow loads it in place
        return mlflow.xgboost.load_model(folder) if raw else mlflow.pyfunc.load_model(folder)
    import skops.io as sio

    estimator = sio.load(found.data_path, trusted=list(found.trusted))
    if raw:
        return estimator
    from mlflow.pyfunc import PyFuncModel

    return PyFuncModel(
        model_meta=found.meta,
        model_impl=_SklearnPredictor(estimator),
        predict_fn=found.predict_fn,
        model_id=found.meta.model_id,
    )


def _load_trusted(model_uri: str, local: Path, why: str, *, raw: bool):
    """MLflow's own loader on the downloaded copy, pickles allowed: the caller trusts it."""
    import mlflow

    logger.warning(
        "trusted load of %s: the safe loader refuses it (%s); loading it anyway as asked "
        "(trust=True / --trust-model): any code it brings runs now",
        model_uri,
        why,
    )
    with pickle_deserialization(True):
        model = mlflow.pyfunc.load_model(str(local))
    return model.get_raw_model() if raw else model


class _SklearnPredictor:
    """The pyfunc face of an estimator read by skops (what MLflow's sklearn wrapper offers)."""

    def __init__(self, estimator):
        self.sklearn_model = estimator

    def predict(self, data, params: dict[str, Any] | None = None):
        return self.sklearn_model.predict(data)

    def predict_proba(self, data, params: dict[str, Any] | None = None):
        return self.sklearn_model.predict_proba(data)

    def get_raw_model(self):
        return self.sklearn_model
