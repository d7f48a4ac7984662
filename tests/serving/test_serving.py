"""Serving: predict on raw rows by alias, and a real ``workbench serve`` subprocess answering
good and bad requests and following a promotion without a restart."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from workbench import registry
from workbench import serve as serving


def split_body(frame) -> dict:
    """The article's request: ``dataframe_split`` built from a DataFrame."""
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def wait_for(condition, timeout: float = 90.0, every: float = 0.5):
    """Poll until ``condition()`` returns something truthy; fail with what it last returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"condition not met within {timeout} s; last value: {last!r}")


def test_parse_model_uri():
    ref = serving.parse_model_uri("models:/churn@champion")
    assert (ref.name, ref.alias, ref.version, ref.follows_alias) == (
        "churn",
        "champion",
        None,
        True,
    )
    ref = serving.parse_model_uri("models:/churn/3")
    assert (ref.name, ref.version, ref.follows_alias) == ("churn", "3", False)
    assert serving.parse_model_uri("models:/m-0123abc").name is None


def test_load_by_alias_predicts_on_raw_rows(registered):
    model = serving.load(registered.uri)
    assert model.version == "1" and model.ref.uri == f"models:/{registered.name}/1"
    raw = registered.split.X_test.head(25)  # the dataset's own columns, missing values included
    out = model.predict_frame(raw)
    assert list(out.columns) == [*raw.columns, "prediction", "probability"]
    sk = registry.load_sklearn(registered.name)
    np.testing.assert_array_equal(out["prediction"], sk.predict(raw))
    np.testing.assert_allclose(out["probability"], sk.predict_proba(raw)[:, 1])


def test_unknown_alias_is_a_clear_error(registered, capsys):
    with pytest.raises(serving.ServingError, match="cannot resolve"):
        serving.load(f"models:/{registered.name}@nobody")
    # `workbench serve` says so and exits 1 before it listens anywhere
    assert serving.serve(f"models:/{registered.name}@nobody", port=serving.free_port()) == 1
    assert "cannot resolve" in capsys.readouterr().err


@pytest.mark.slow
def test_good_requests_in_every_format(server, registered):
    rows = registered.split.X_test.head(6)
    expected = serving.load(registered.uri).score(rows)
    bodies = {
        "dataframe_split": split_body(rows),
        "dataframe_records": {"dataframe_records": json.loads(rows.to_json(orient="records"))},
        "inputs": {"inputs": {c: json.loads(rows[c].to_json(orient="values")) for c in rows}},
    }
    for label, body in bodies.items():
        r = requests.post(server.url + "/invocations", json=body, timeout=30)
        assert r.status_code == 200, (label, r.text)
        out = r.json()
        assert out["predictions"] == expected["predictions"], label
        assert np.allclose(out["probabilities"], expected["probabilities"]), label
        assert out["model_version"] == "1" and r.headers["X-Model-Version"] == "1"
    r = requests.post(
        server.url + "/invocations",
        data=rows.to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["predictions"] == expected["predictions"]
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health == {"status": "ok", "model_version": "1"}, "status and version, nothing else"
    about = requests.get(server.url + "/version", timeout=10).json()
    assert about["mlflow"].startswith("3.") and about["model_name"] == registered.name


@pytest.mark.slow
def test_bad_requests_get_a_4xx_naming_the_problem(server, registered):
    rows = registered.split.X_test.head(3)
    wrong_type = split_body(rows)
    wrong_type["dataframe_split"]["data"][0][0] = "twelve"  # tenure_months
    number_for_text = split_body(rows)
    number_for_text["dataframe_split"]["data"][0][1] = 7  # contract
    cases = [
        (
            "missing column",
            {"json": split_body(rows.drop(columns=["tenure_months"]))},
            422,
            "tenure_months",
        ),
        ("wrong type", {"json": wrong_type}, 422, "tenure_months"),
        ("number for text", {"json": number_for_text}, 422, "contract"),
        (
            "malformed JSON",
            {"data": '{"dataframe_split": [', "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("unknown format", {"json": {"rows": [[1, 2]]}}, 400, "dataframe_split"),
        (
            "ragged table",
            {"json": {"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}},
            400,
            "columns",
        ),
        (
            "content type",
            {"data": "x", "headers": {"Content-Type": "text/plain"}},
            415,
            "text/plain",
        ),
    ]
    for label, kwargs, status, words in cases:
        r = requests.post(server.url + "/invocations", timeout=30, **kwargs)
        assert r.status_code == status, (label, r.status_code, r.text)
        assert words in r.json()["message"], (label, r.text)
        assert r.headers["X-Model-Version"] == "1"
    ok = requests.post(server.url + "/invocations", json=split_body(rows), timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3, "the server keeps serving"


@pytest.mark.slow
def test_promotion_is_followed_and_a_failed_reload_keeps_serving(server, registered):
    name, split = registered.name, registered.split
    body = split_body(split.X_test.head(4))

    def answered_by() -> str:
        r = requests.post(server.url + "/invocations", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == r.headers["X-Model-Version"]
        return r.json()["model_version"]

    assert answered_by() == "1"
    registry.set_challenger(name, 2)
    assert registry.promote(name, split.X_test, split.y_test).promoted
    wait_for(lambda: answered_by() == "2")
    assert (
        requests.get(server.url + "/version", timeout=10).json()["loaded_uri"]
        == f"models:/{name}/2"
    )

    registry.set_alias(name, "champion", 3)  # v3's files are gone: its load must fail
    wait_for(lambda: f"cannot load models:/{name}/3" in server.log())  # said in the log ...
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health == {"status": "ok", "model_version": "2"}, "... not to clients"
    assert answered_by() == "2", "the old model keeps serving after a failed reload"
    assert "reload of" in server.log() and "still serving version 2" in server.log()
    registry.set_alias(name, "champion", 1)
    wait_for(lambda: answered_by() == "1")
