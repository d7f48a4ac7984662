"""What a client can make ``workbench serve`` do is bounded, tried against real servers.

A real oversized POST (a declared 64 MB body, and a chunked one that never says its size) is
answered 413 before it is parsed and the server keeps serving; too many rows get 413 naming
the limit and the option; error answers carry no exception text (that goes to the server log
under the request id the client gets); ``/health`` says status and version only.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import requests
from sklearn.linear_model import LogisticRegression

from workbench import registry, tracking
from workbench import serve as serving
from workbench.core import store as store_module
from workbench.core.ports import free_port, wait_http
from workbench.tracking import data, models

MB = 1024 * 1024


@dataclass
class Served:
    split: data.Split
    name: str
    default: serving.ServerProcess  # default limits: 16 MB, 100,000 rows
    small: serving.ServerProcess  # --max-body-mb 1 --max-rows 50
    folder: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("scoring-limits")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        split = data.load_dataset("churn", seed=9, n_rows=600).split(seed=9)
        pipe = data.make_pipeline(LogisticRegression(max_iter=300), split.X_train)
        with tracking.start_run(f"limits-{uuid.uuid4().hex[:8]}", algorithm="logreg"):
            info = models.log_model(pipe.fit(split.X_train, split.y_train), split.X_val)
        name = f"limits-{uuid.uuid4().hex[:8]}"
        registry.register(info, name, alias="champion")
        model_uri = registry.model_uri(name)
        default = serving.start_server(model_uri, log_path=folder / "default.log")
        small = start_small(model_uri, uri, folder)
        try:
            yield Served(split, name, default, small, folder)
        finally:
            default.stop()
            small.stop()
            store_module.forget(uri)


def start_small(model_uri: str, tracking_uri: str, folder: Path) -> serving.ServerProcess:
    """``workbench serve`` with small limits, as an operator would start it."""
    port, log_path = free_port(), folder / "small.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "workbench.cli", "serve", model_uri, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--max-body-mb", "1", "--max-rows", "50"],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = serving.ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    if not wait_http(server.url + "/ping", proc=proc, timeout=120):
        server.stop()
        pytest.fail(f"the server did not start:\n{server.log()}")
    return server


def raw_post(url: str, headers: dict[str, str], pieces: Iterator[bytes]) -> tuple[int, dict, int]:
    """POST through a bare socket, sending ``pieces`` until the server answers (or hangs up).

    Returns the status, the JSON answer and how many body bytes went out: a server that
    refuses early must not have waited for the rest.
    """
    parts = urlparse(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    try:
        head = ["POST /invocations HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is already there
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), sent
    finally:
        sock.close()


def padding(total: int, size: int = MB) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


def chunked(total: int, size: int = MB) -> Iterator[bytes]:
    for piece in padding(total, size):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def split_body(frame) -> dict:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def assert_serving(server: serving.ServerProcess, served: Served) -> None:
    rows = served.split.X_test.head(3)
    r = requests.post(server.url + "/invocations", json=split_body(rows), timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3, r.text


@pytest.mark.slow
def test_a_declared_64_mb_body_gets_413_before_it_is_read(served):
    headers = {"Content-Type": "application/json", "Content-Length": str(64 * MB)}
    status, answer, sent = raw_post(served.default.url, headers, padding(64 * MB))
    assert status == 413 and answer["error_code"] == "BODY_TOO_LARGE", answer
    assert "16 MB" in answer["message"] and "--max-body-mb" in answer["message"]
    assert sent < 16 * MB, f"the server waited for {sent} bytes before refusing"
    assert_serving(served.default, served)


@pytest.mark.slow
def test_a_chunked_body_is_counted_as_it_streams_and_cut_at_the_limit(served):
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    status, answer, sent = raw_post(served.default.url, headers, chunked(64 * MB))
    assert status == 413 and answer["error_code"] == "BODY_TOO_LARGE", answer
    assert 16 * MB <= sent < 48 * MB, f"{sent} bytes went out before the refusal"
    assert_serving(served.default, served)


@pytest.mark.slow
def test_the_body_limit_is_an_option(served):
    rows = served.split.X_test.head(5)
    body = json.dumps(split_body(rows))
    padded = body + " " * (MB + 10)  # valid JSON, just over 1 MB
    r = requests.post(
        served.small.url + "/invocations",
        data=padded,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and "1 MB" in r.json()["message"], r.text
    assert_serving(served.small, served)
    r = requests.post(
        served.default.url + "/invocations",
        data=padded,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, "the default limit takes the same body"


@pytest.mark.slow
def test_too_many_rows_get_413_naming_the_limit_and_the_option(served):
    rows = served.split.X_test
    assert len(rows) > 50
    r = requests.post(served.small.url + "/invocations", json=split_body(rows.head(51)), timeout=30)
    assert r.status_code == 413 and r.json()["error_code"] == "TOO_MANY_ROWS", r.text
    assert "limit of 50 rows" in r.json()["message"] and "--max-rows" in r.json()["message"]
    csv = requests.post(
        served.small.url + "/invocations",
        data=rows.head(51).to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert csv.status_code == 413 and "--max-rows" in csv.json()["message"], csv.text
    ok = requests.post(
        served.small.url + "/invocations", json=split_body(rows.head(50)), timeout=30
    )
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 50
    many = {"dataframe_records": [{}] * 100_001}  # 300 KB of JSON, 100,001 rows
    r = requests.post(served.default.url + "/invocations", json=many, timeout=60)
    assert r.status_code == 413 and "limit of 100000 rows" in r.json()["message"], r.text


@pytest.mark.slow
def test_errors_carry_no_exception_text_and_the_log_has_it(served):
    rows = served.split.X_test.head(3)
    url = served.default.url + "/invocations"
    ragged = {"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}
    cases = {
        "malformed JSON": dict(
            data='{"dataframe_split": [', headers={"Content-Type": "application/json"}
        ),
        "ragged table": dict(json=ragged),
        "bad CSV": dict(data=b"\xff\xfe\x00", headers={"Content-Type": "text/csv"}),
        "model failure": dict(json=split_body(rows.drop(columns=["total_charges"]))),
    }
    leaks = ("Traceback", "Expecting", "Error:", 'File "', "/site-packages/", "total_charges")
    for label, kwargs in cases.items():
        r = requests.post(url, timeout=30, **kwargs)
        assert 400 <= r.status_code < 500, (label, r.status_code, r.text)
        answer = r.json()
        assert set(answer) == {"error_code", "message", "request_id", "model_version"}, answer
        assert not any(leak in r.text for leak in leaks), (label, r.text)
        assert answer["request_id"] in served.default.log(), "the log has the details"
    assert "total_charges" in served.default.log(), "the model's own error is in the log"


def test_health_says_status_and_version_only(served):
    health = requests.get(served.default.url + "/health", timeout=10)
    assert health.json() == {"status": "ok", "model_version": "1"}
    about = requests.get(served.default.url + "/version", timeout=10).json()
    assert str(served.folder) not in json.dumps(about), "no path of the server's disk"
    assert about["loaded_uri"] == f"models:/{served.name}/1"
