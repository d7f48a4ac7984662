"""Loading a model never runs code it brought, tried as an attacker would.

The attacker can write to the store (register a version, move ``champion``): a real pyfunc
``PythonModel`` and a real cloudpickled estimator whose unpickling writes a marker file, a real
skops model asking to trust ``builtins.eval``, and ``MLmodel`` files edited by hand. Every way
in (``registry.load``, ``models.load_model``, promotion scoring, the serving loader and a real
``workbench serve`` process) refuses them and the marker never appears; a model the user trusts
loads with ``trust=True`` / ``--trust-model``, and that is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from workbench import registry, tracking
from workbench import serve as serving
from workbench.core import store as store_module
from workbench.core.ports import free_port, wait_http
from workbench.tracking import data, models
from workbench.tracking.loading import PICKLE_ENV, TRUSTED_TYPES, XGBOOST_CLASSES

SERVE = [sys.executable, "-m", "workbench.cli", "serve"]
FORBIDDEN_PREFIXES = (
    "builtins.", "os.", "posix.", "nt.", "subprocess.", "pickle.", "_pickle.", "marshal.",
    "importlib.", "functools.", "operator.", "_operator.", "sys.", "shutil.", "runpy.", "code.",
    "codecs.", "io.", "socket.", "ctypes.",
)  # fmt: skip


def payload(marker: Path) -> tuple:
    """What unpickling runs: ``exec`` of a line that writes ``marker`` (works in any process)."""
    return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))


class EvilModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model that looks harmless; unpickling it runs the payload."""

    marker: Path

    def predict(self, context, model_input, params=None):
        return model_input

    def __reduce__(self):
        return payload(self.marker)


class EvilEstimator(ClassifierMixin, BaseEstimator):
    """A scikit-learn estimator whose cloudpickle runs the payload when loaded."""

    marker: Path

    def predict(self, X):
        return np.zeros(len(X), dtype=int)

    def __reduce__(self):
        return payload(self.marker)


@dataclass
class Store:
    """One store for the module: a good model, the attacker's models, a trusted pickle."""

    uri: str
    folder: Path
    split: data.Split
    marker: Path  # the payload writes it: it must never exist
    good: object  # ModelInfo, skops, checked types
    evil_name: str  # registered pyfunc payload, aliased champion
    evil: object  # its ModelInfo
    evil_sk: object  # ModelInfo of a cloudpickled estimator with the payload
    pickled_name: str  # a legitimate cloudpickled pipeline, aliased champion
    pickled: object  # its fitted pipeline


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    folder = tmp_path_factory.mktemp("model-loading")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        split = data.load_dataset("churn", seed=8, n_rows=400).split(seed=8)
        marker = folder / "pwned"
        with tracking.start_run(f"loading-{uuid.uuid4().hex[:8]}", algorithm="mixed"):
            good = log_good(split)
            evil, evil_sk = log_evil(marker)
            pickled_info, pipe = log_pickled(split)
        assert not marker.exists(), "logging must not have run the payload"
        evil_name, pickled_name = (f"{k}-{uuid.uuid4().hex[:8]}" for k in ("evil", "pickled"))
        registry.register(evil, evil_name, alias="champion")
        registry.register(pickled_info, pickled_name, alias="champion")
        yield Store(uri, folder, split, marker, good, evil_name, evil, evil_sk, pickled_name, pipe)
        store_module.forget(uri)


def log_good(split):
    """A model logged the workbench way (skops, checked types)."""
    pipe = data.make_pipeline(LogisticRegression(max_iter=300), split.X_train)
    return models.log_model(pipe.fit(split.X_train, split.y_train), split.X_val, name="good")


def log_evil(marker: Path):
    """A pyfunc model with the payload, and a cloudpickled estimator with it."""
    pyfunc_model, estimator = EvilModel(), EvilEstimator()
    pyfunc_model.marker = estimator.marker = marker
    info = mlflow.pyfunc.log_model(
        name="evil", python_model=pyfunc_model, pip_requirements=["mlflow"]
    )
    sk_info = mlflow.sklearn.log_model(
        estimator,
        name="evil-sk",
        serialization_format="cloudpickle",
        pip_requirements=["scikit-learn"],
    )
    return info, sk_info


def log_pickled(split):
    """A legitimate model saved with cloudpickle (as autolog does)."""
    from mlflow.models import infer_signature

    pipe = data.make_pipeline(LogisticRegression(max_iter=300), split.X_train)
    pipe.fit(split.X_train, split.y_train)
    info = mlflow.sklearn.log_model(
        pipe,
        name="pickled",
        serialization_format="cloudpickle",
        pip_requirements=["scikit-learn"],
        signature=infer_signature(split.X_val, pipe.predict(split.X_val)),
    )
    return info, pipe


def serve_env(store: Store) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PYTHONUNBUFFERED": "1"}


def refuses(call, match: str):
    with pytest.raises(models.ModelRefused, match=match) as refused:
        call()
    text = str(refused.value)
    assert "--trust-model" in text and "trust=True" in text, "the refusal says how to load it"
    return refused.value


def test_the_payload_is_live_when_mlflow_loads_it_plainly(store, monkeypatch):
    """The attack is real: MLflow's own loader (pickles allowed, its 3.17 default) runs it."""
    live = store.folder / "live-payload"
    model = EvilModel()
    model.marker = live
    with tracking.start_run(f"live-{uuid.uuid4().hex[:8]}", algorithm="attacker"):
        info = mlflow.pyfunc.log_model(name="live", python_model=model, pip_requirements=["mlflow"])
    monkeypatch.setenv(PICKLE_ENV, "true")
    with contextlib.suppress(Exception):  # the payload ran; what it returned is no model
        mlflow.pyfunc.load_model(info.model_uri)
    assert live.read_text() == "pwned"


def test_every_loader_refuses_a_pyfunc_payload(store):
    name, uri = store.evil_name, f"models:/{store.evil_name}@champion"
    refuses(lambda: registry.load(name), "PythonModel")
    refuses(lambda: registry.load_sklearn(name), "PythonModel")
    refuses(lambda: models.load_model(uri), "PythonModel")
    refuses(lambda: models.load_model(store.evil.model_uri), "PythonModel")
    refuses(lambda: models.load_model(store.evil_sk.model_uri), "cloudpickle, not skops")
    refuses(lambda: models.load_sklearn(store.evil_sk.model_uri), "cloudpickle, not skops")
    refuses(lambda: models.check_trusted_types(uri), "PythonModel")
    with pytest.raises(serving.ServingError, match="refused to load"):
        serving.load(uri)
    with pytest.raises(serving.ServingError, match="refused to load"):
        serving.ModelManager(uri, refresh_interval=60)
    before = os.environ.get(PICKLE_ENV)
    assert serving.serve(uri, port=free_port()) == 1, "`workbench serve` in this process refuses"
    assert os.environ.get(PICKLE_ENV) == before, "and puts MLflow's pickle switch back"
    assert not store.marker.exists(), "no loader ran the model's code"


def test_promotion_scoring_refuses_a_pickled_challenger_and_champion(store):
    X, y, name = store.split.X_test, store.split.y_test, f"promo-{uuid.uuid4().hex[:8]}"
    registry.register(store.good, name, alias="challenger")
    registry.promote(name, X, y)  # the good model is champion
    evil_version = registry.register(store.evil_sk, name, alias="challenger").version
    refuses(lambda: registry.promote(name, X, y), "cloudpickle")
    assert registry.aliases(name)["champion"] == "1", "a refused load moves nothing"

    registry.set_alias(name, "champion", evil_version)  # the attacker crowns it by hand
    registry.register(store.good, name, alias="challenger")
    with pytest.raises(registry.RegistryError, match="cannot score the champion"):
        registry.promote(name, X, y)
    assert not store.marker.exists(), "scoring never unpickled the payload"


def test_workbench_serve_refuses_the_champion_in_a_real_process(store, tmp_path):
    done = subprocess.run(
        [*SERVE, f"models:/{store.evil_name}@champion", "--port", str(free_port())],
        env={**serve_env(store), PICKLE_ENV: "true"},  # even with MLflow's pickles allowed
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused to load" in done.stderr and "PythonModel" in done.stderr, done.stderr
    assert "--trust-model" in done.stderr
    assert not store.marker.exists(), "the serving process never ran the model's code"


@pytest.mark.parametrize(
    "types", [["builtins.eval"], ["numpy.dtype", "builtins.exec"], ["os.system"],
              ["posix.system"], ["subprocess.Popen"], ["functools.partial"],
              ["sklearn.tree._tree.Tree", "importlib.import_module"], ["builtins."]],
)  # fmt: skip
def test_trusted_types_off_the_exact_allow_list_are_refused(store, tmp_path, types):
    local = edited_copy(store.good.model_uri, tmp_path, lambda spec: trust(spec, types))
    bad = next(t for t in types if t not in TRUSTED_TYPES)
    refuses(lambda: models.check_loadable(local), rf"outside the allow-list: .*{bad}")
    refuses(lambda: models.load_model(str(local)), bad)


def trust(spec: dict, types: list[str]) -> None:
    spec["flavors"]["sklearn"]["skops_trusted_types"] = types


def test_a_real_skops_model_that_needs_builtins_eval_is_refused(store):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    rows = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    pipe = Pipeline([("f", FunctionTransformer(func=eval)), ("m", LogisticRegression())])
    pipe.set_params(f__func=None).fit(rows, [0, 1, 0, 1]).set_params(f__func=eval)
    with tracking.start_run(f"eval-{uuid.uuid4().hex[:8]}", algorithm="attacker"):
        info = mlflow.sklearn.log_model(
            pipe,
            name="eval",
            serialization_format="skops",
            skops_trusted_types=["builtins.eval"],
            pip_requirements=["scikit-learn", "skops"],
        )
    refuses(lambda: models.load_model(info.model_uri), r"builtins\.eval")
    refuses(lambda: models.load_sklearn(info.model_uri), r"builtins\.eval")


def drop_format(spec):
    del spec["flavors"]["sklearn"]["serialization_format"]


def drop_sklearn(spec):
    del spec["flavors"]["sklearn"]


def drop_pyfunc(spec):
    del spec["flavors"]["python_function"]


def as_python_model(spec):
    spec["flavors"]["python_function"]["loader_module"] = "mlflow.pyfunc.model"


def other_loader(spec):
    spec["flavors"]["python_function"]["loader_module"] = "mlflow.pyfunc.loaders.chat_agent"


def with_code(spec):
    spec["flavors"]["python_function"]["code"] = "code"


def outside_file(spec):
    spec["flavors"]["sklearn"]["pickled_model"] = "../../../../etc/hostname"
    spec["flavors"]["python_function"]["model_path"] = "../../../../etc/hostname"


def odd_predict_fn(spec):
    spec["flavors"]["python_function"]["predict_fn"] = "__reduce__"


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (drop_format, "no serialization_format"),
        (drop_sklearn, "no sklearn flavour"),
        (drop_pyfunc, "no python_function flavour"),
        (as_python_model, "PythonModel"),
        (other_loader, "not mlflow.sklearn or mlflow.xgboost"),
        (with_code, "brings code"),
        (outside_file, "not a file inside the model directory"),
        (odd_predict_fn, "predict_fn"),
    ],
)
def test_mlmodel_files_edited_by_an_attacker_are_refused(store, tmp_path, edit, why):
    untouched = edited_copy(store.good.model_uri, tmp_path / "as-logged", lambda spec: None)
    assert models.check_loadable(untouched).trusted == ("numpy.dtype",)
    local = edited_copy(store.good.model_uri, tmp_path / "edited", edit)
    refuses(lambda: models.check_loadable(local), why)
    refuses(lambda: models.load_model(str(local)), why)


def edited_copy(model_uri: str, folder: Path, edit) -> Path:
    """A downloaded copy of the model whose MLmodel ``edit`` changed."""
    folder.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    edit(spec)
    (local / "MLmodel").write_text(yaml.safe_dump(spec))
    return local


def test_the_allow_list_names_exact_types_none_that_run_code():
    for name in TRUSTED_TYPES | XGBOOST_CLASSES:
        assert not name.endswith(".") and "*" not in name, name
        assert not name.startswith(FORBIDDEN_PREFIXES), name
        assert name.split(".")[0] in ("numpy", "sklearn", "xgboost"), name


def test_a_good_model_loads_with_mlflows_pickle_switch_off(store, monkeypatch):
    monkeypatch.setenv(PICKLE_ENV, "false")  # as in `workbench serve` and the kernels
    rows = store.split.X_test.head(10)
    pyfunc = models.load_model(store.good.model_uri)
    sk = models.load_sklearn(store.good.model_uri)
    np.testing.assert_array_equal(pyfunc.predict(rows), sk.predict(rows))
    assert sk.predict_proba(rows).shape == (10, 2)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['contract'\]"):
        pyfunc.predict(rows.drop(columns=["contract"]))  # the schema is still enforced
    assert os.environ[PICKLE_ENV] == "false"


def test_a_trusted_pickle_loads_and_the_load_is_logged(store, monkeypatch, caplog):
    name, pipe = store.pickled_name, store.pickled
    monkeypatch.setenv(PICKLE_ENV, "false")
    refuses(lambda: registry.load(name), "cloudpickle, not skops")
    rows = store.split.X_test.head(8)
    version_uri = f"models:/{name}/1"
    with caplog.at_level(logging.WARNING, logger="workbench.models"):
        model = registry.load(name, trust=True)
        sk = models.load_sklearn(version_uri, trust=True)
    np.testing.assert_array_equal(model.predict(rows), pipe.predict(rows))
    np.testing.assert_allclose(sk.predict_proba(rows), pipe.predict_proba(rows))
    trusted = [r.getMessage() for r in caplog.records if "trusted load of" in r.getMessage()]
    assert any(f"models:/{name}@champion" in m for m in trusted), trusted
    assert any(version_uri in m for m in trusted), trusted
    assert os.environ[PICKLE_ENV] == "false", "the switch is put back after the trusted load"


@pytest.mark.slow
def test_workbench_serve_trust_model_serves_a_trusted_pickle(store, tmp_path):
    name, pipe = store.pickled_name, store.pickled
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*SERVE, f"models:/{name}@champion", "--port", str(port), "--trust-model"],
            env=serve_env(store),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_http(url + "/ping", proc=proc, timeout=120), log_path.read_text()
        rows = store.split.X_test.head(5)
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        r = requests.post(url + "/invocations", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == pipe.predict(rows).tolist()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log_path.read_text()
    assert f"trusted load of models:/{name}/1" in text and "--trust-model" in text, text


def test_xgboost_native_format_loads_and_a_tampered_class_is_refused(store, tmp_path):
    from xgboost import XGBClassifier

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(scale=0.5, size=80) > 0).astype(int)
    clf = XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(X, y)
    with tracking.start_run(f"xgb-{uuid.uuid4().hex[:8]}", algorithm="xgboost"):
        info = mlflow.xgboost.log_model(clf, name="xgb", pip_requirements=["xgboost"])
    np.testing.assert_array_equal(models.load_model(info.model_uri).predict(X), clf.predict(X))
    np.testing.assert_allclose(
        models.load_sklearn(info.model_uri).predict_proba(X), clf.predict_proba(X)
    )

    def os_class(spec):
        spec["flavors"]["xgboost"]["model_class"] = "os.system"

    def pickle_file(spec):
        spec["flavors"]["xgboost"].update(model_format="pkl", data="model.pkl")

    local = edited_copy(info.model_uri, tmp_path / "class", os_class)
    refuses(lambda: models.load_model(str(local)), "model_class 'os.system'")
    local = edited_copy(info.model_uri, tmp_path / "format", pickle_file)
    refuses(lambda: models.load_model(str(local)), "native .ubj or .json")
