"""A store with a registered churn model (v1 weak champion, v2 strong, v3 broken), shared by
the serving tests of one module, and a real ``workbench serve`` following its alias."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from workbench import registry, tracking
from workbench import serve as serving
from workbench.core import store
from workbench.tracking import data, models


@dataclass
class Registered:
    name: str
    split: data.Split
    uri: str  # models:/<name>@champion


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    folder = tmp_path_factory.mktemp("serving-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        split = data.load_dataset("churn", seed=4, n_rows=1200).split(seed=4)
        weak = data.make_pipeline(
            DecisionTreeClassifier(max_depth=1, random_state=4), split.X_train
        )
        strong = data.make_pipeline(LogisticRegression(max_iter=500), split.X_train)
        name = f"churn-serve-{uuid.uuid4().hex[:8]}"
        with tracking.start_run(f"serving-{uuid.uuid4().hex[:8]}", algorithm="candidates"):
            infos = [
                models.log_model(pipe.fit(split.X_train, split.y_train), split.X_val, name=label)
                for label, pipe in (("weak", weak), ("strong", strong), ("broken", weak))
            ]
        for info in infos:
            registry.register(info, name)
        # v3 loses its files, as when an artifact store is cleaned by mistake.
        location = mlflow.MlflowClient().get_logged_model(infos[2].model_id).artifact_location
        shutil.rmtree(Path(urlparse(location).path))
        registry.set_challenger(name, 1)
        registry.promote(name, split.X_test, split.y_test)  # the weak tree is champion first
        yield Registered(name, split, registry.model_uri(name))
        store.forget(uri)


@pytest.fixture(scope="module")
def server(registered):
    """``workbench serve models:/<name>@champion`` re-resolving the alias every second."""
    proc = serving.start_server(registered.uri, refresh_interval=1.0)
    try:
        yield proc
    finally:
        code = proc.stop()
        assert not proc.running(), f"server still running (code {code})"
