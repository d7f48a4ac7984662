"""Secrets by name (snake_case, camelCase, SCREAMING_CASE) and by value (``user:pw@`` in a
URL) are masked in everything the workbench writes down."""

from __future__ import annotations

import pytest

from workbench.core.secrets import REDACTED, is_secret, mask_url, redact, scrub, secret_values
from workbench.run.jobs import derive_label
from workbench.tracking.runs import run_name


@pytest.mark.parametrize(
    "name",
    [
        "password", "db_password", "dbPassword", "DB_PASSWORD", "passwd", "pwd", "apiToken",
        "api_key", "apikey", "apiKey", "API-KEY", "client_secret", "clientSecret", "secret",
        "auth", "authToken", "credentials", "private_key", "privateKey",
        "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "github.token", "passphrase",
    ],
)  # fmt: skip
def test_secret_names_in_every_spelling(name):
    assert is_secret(name), name


@pytest.mark.parametrize(
    "name",
    ["learning_rate", "max_depth", "key_params", "author", "n_tokens", "signature", "seed",
     "experiment_name", "monkey", "passes", "tokenizer_name", "dataset"],
)  # fmt: skip
def test_ordinary_names_stay_readable(name):
    assert not is_secret(name), name


def test_url_passwords_are_masked_and_the_user_kept():
    assert mask_url("postgresql://alice:s3cr%40t@db:5432/mlflow") == (
        f"postgresql://alice:{REDACTED}@db:5432/mlflow"
    )
    text = "store postgresql+psycopg://bob:pw1@h/x and https://u:p@example.org/path"
    assert (
        mask_url(text)
        == f"store postgresql+psycopg://bob:{REDACTED}@h/x and https://u:{REDACTED}@example.org/path"
    )
    assert mask_url("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"
    assert mask_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_redact_masks_by_name_and_by_value_at_any_depth():
    params = {
        "dbPassword": "hunter2",
        "db_url": "postgresql://bob:pw@db/x",
        "nested": {"apiToken": "t0k", "urls": ["mysql://a:b@h/d"]},
        "lr": 0.1,
    }
    out = redact(params)
    assert out == {
        "dbPassword": REDACTED,
        "db_url": f"postgresql://bob:{REDACTED}@db/x",
        "nested": {"apiToken": REDACTED, "urls": [f"mysql://a:{REDACTED}@h/d"]},
        "lr": 0.1,
    }
    assert params["dbPassword"] == "hunter2", "the caller's values (the kernel's) are untouched"


def test_free_text_is_scrubbed_of_every_secret_value():
    params = {"apiToken": "abc123xyz", "db_url": "postgresql://bob:pw9876@db/x", "lr": 0.1}
    found = secret_values(params)
    assert set(found) == {"abc123xyz", "pw9876"}
    line = "label apiToken=abc123xyz db=postgresql://bob:pw9876@db/x"
    assert "abc123xyz" not in scrub(line, found) and "pw9876" not in scrub(line, found)


def test_labels_and_run_names_never_carry_a_secret():
    label = derive_label({"dbPassword": "hunter2", "lr": 0.2, "db_url": "postgresql://u:pw@h/d"})
    assert "hunter2" not in label and "pw@" not in label and "lr=0.2" in label
    name = run_name("gbm", {"apiToken": "abc123", "depth": 3})
    assert "abc123" not in name and "depth3" in name
