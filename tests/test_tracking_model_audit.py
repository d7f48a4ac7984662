"""The skops archive audited once per distinct ensemble member says what skops itself says."""

import io
import json
import re
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import (
    AdaBoostClassifier,
    BaggingClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    VotingClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from workbench.core import skops_compat
from workbench.tracking import models
from workbench.tracking.data import load_dataset, make_pipeline


@pytest.fixture(scope="module")
def split():
    return load_dataset("churn", seed=3, n_rows=800).split(seed=3)


def _mixed_vote():
    """20 members of three types in one list: the audit must see every type."""
    members = [LogisticRegression(max_iter=300), DecisionTreeClassifier(max_depth=2), GaussianNB()]
    return VotingClassifier(
        [(f"m{i}", members[i % 3]) for i in range(20)], voting="soft", n_jobs=None
    )


ESTIMATORS = {
    "gbm": lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0),
    "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=3, random_state=0),
    "extra-trees": lambda: ExtraTreesClassifier(n_estimators=20, max_depth=3, random_state=0),
    "hist-gbm": lambda: HistGradientBoostingClassifier(max_iter=20, early_stopping=False),
    "adaboost": lambda: AdaBoostClassifier(n_estimators=20, random_state=0),
    "bagging": lambda: BaggingClassifier(LogisticRegression(max_iter=300), n_estimators=18),
    "mixed-vote": _mixed_vote,
    "logistic": lambda: LogisticRegression(max_iter=300),
}


@pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS.keys())
def test_audited_archive_trusts_exactly_what_skops_finds_and_loads_back(split, make):
    pipe = make_pipeline(make(), split.X_train).fit(split.X_train, split.y_train)
    lean = models.compact(pipe)
    payload, schema, trusted = skops_compat.audited_archive(lean)
    assert trusted == sorted(sio.get_untrusted_types(data=payload))
    assert trusted == skops_compat.untrusted_in_schema(schema)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert archive.read("schema.json").decode() == schema
    back = sio.loads(payload, trusted=trusted)
    np.testing.assert_array_equal(back.predict(split.X_test), pipe.predict(split.X_test))


def test_audited_archive_writes_the_schema_archive_writes(split):
    """The schema is assembled from its members' JSON texts: the same document, member for
    member (object ids and the array file names made from them differ between two saves)."""
    pipe = make_pipeline(
        GradientBoostingClassifier(n_estimators=25, max_depth=2, random_state=0), split.X_train
    ).fit(split.X_train, split.y_train)
    lean = models.compact(pipe)

    def without_ids(text: str) -> str:
        return re.sub(r'"__id__": \d+|"file": "[^"]*"', "", text)

    _, plain = skops_compat.archive(lean)
    _, assembled, _ = skops_compat.audited_archive(lean)
    assert without_ids(assembled) == without_ids(plain)
    assert json.loads(assembled)["protocol"] == json.loads(plain)["protocol"]
    assert assembled.count('"DecisionTreeRegressor"') == 25


def test_skops_json_of_primitives_is_json_dumps_and_is_put_back():
    import skops.io._general as general

    values = [
        "", "plain", "é ü \u2603 \U0001f600", 'quote " and \\ back\nslash', 0, -1, 2**70, True,
        False, None, 0.0, -0.0, 0.1, 1e300, 5e-324, float("nan"), float("inf"), float("-inf"),
    ]  # fmt: skip
    before = general.json
    with skops_compat._json_primitives():
        for value in values:
            assert general.json.dumps(value) == json.dumps(value), value
        assert general.json.dumps([1, "a"]) == json.dumps([1, "a"])  # everything else: json's
        assert general.json.dumps(1, indent=2) == json.dumps(1, indent=2)
        assert general.json.loads is json.loads
    assert general.json is before
