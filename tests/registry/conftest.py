"""Two quick candidate models of different quality, logged to the test's own store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import mlflow
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from workbench import tracking
from workbench.tracking import data, evaluation, models


@dataclass
class Candidates:
    split: data.Split
    strong: object  # ModelInfo of a logistic regression
    weak: object  # ModelInfo of a depth-1 tree
    strong_run: str
    weak_run: str


@pytest.fixture(scope="session")
def fitted():
    """Fit once per session: a decent model and a deliberately weak one."""
    split = data.load_dataset("churn", seed=3, n_rows=1500).split(seed=3)
    strong = data.make_pipeline(LogisticRegression(max_iter=500), split.X_train)
    weak = data.make_pipeline(DecisionTreeClassifier(max_depth=1, random_state=3), split.X_train)
    return split, strong.fit(split.X_train, split.y_train), weak.fit(split.X_train, split.y_train)


@pytest.fixture
def candidates(tracking_uri, experiment_name, fitted) -> Candidates:
    split, strong, weak = fitted
    infos, runs = {}, {}
    with tracking.start_run(experiment_name, algorithm="candidates"):
        for label, pipe in (("strong", strong), ("weak", weak)):
            with mlflow.start_run(run_name=label, nested=True) as child:
                evaluation.evaluate_classifier(pipe, split.X_val, split.y_val, artifacts=False)
                infos[label] = models.log_model(pipe, split.X_val)
                runs[label] = child.info.run_id
    return Candidates(split, infos["strong"], infos["weak"], runs["strong"], runs["weak"])


@pytest.fixture
def model_name() -> str:
    return f"churn-test-{uuid.uuid4().hex[:8]}"
