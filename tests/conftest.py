"""Shared fixtures: every test gets its own temporary tracking store and experiment name."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No test inherits a run id, notebook path or store from the shell that started pytest."""
    for var in (
        "WORKBENCH_RUN_ID",
        "WORKBENCH_NOTEBOOK",
        "WORKBENCH_PARAMS_FILE",
        "WORKBENCH_ARTIFACT_ROOT",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # MLflow writes some variables itself (set_experiment exports MLFLOW_EXPERIMENT_ID), and so
    # may code under test: whatever a test leaves in MLFLOW_* / WORKBENCH_* is undone, so the
    # next test (and the nbval kernels, which inherit this environment) start clean.
    before = {k: v for k, v in os.environ.items() if k.startswith(_OWN_PREFIXES)}
    yield
    import mlflow

    from workbench.core import mlflow_compat

    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    mlflow_compat.forget_active_experiment()
    for key in [k for k in os.environ if k.startswith(_OWN_PREFIXES)]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


_OWN_PREFIXES = ("MLFLOW_", "WORKBENCH_")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh embedded store in a temporary folder, set as MLFLOW_TRACKING_URI."""
    import mlflow

    from workbench.core import store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)  # the fluent API may hold an earlier test's store
    mlflow.set_registry_uri(uri)
    yield uri
    store.forget(uri)


@pytest.fixture
def experiment_name(request) -> str:
    """A unique experiment name for this test."""
    return f"test-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ci() -> bool:
    """True under CI, where a missing service is a failure rather than a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    """Point the whole session (nbval kernels included) at a throwaway store, so no test
    writes to the project's own mlflow.db; tests that need their own use `tracking_uri`."""
    import tempfile

    if not os.environ.get("WORKBENCH_TEST_KEEP_URI"):
        session_dir = Path(tempfile.mkdtemp(prefix="wb-test-store-"))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{session_dir / 'mlflow.db'}"
        os.environ["MPLBACKEND"] = "Agg"


# nbval runs the product's notebooks (notebooks/); the fixture notebooks under tests/ fail on
# purpose and are executed by the runner tests, never collected as notebooks themselves.
collect_ignore_glob = ["*.ipynb", "*/*.ipynb", "*/*/*.ipynb", "*/*/*/*.ipynb"]


# ------------------------------------------------------------------ a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def _installer_running() -> bool:
    """True while scripts/install-test-deps.sh (or an apt-get/dpkg it started) runs."""
    import subprocess

    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(word in out for word in ("install-test-deps", "apt-get install", "dpkg"))


@pytest.fixture
def chromium():
    """Debian's chromium, launched headless by Playwright (never a downloaded browser).

    Waits while scripts/install-test-deps.sh may still be installing it; skips, or fails
    under CI, when chromium or the playwright package is missing. Closed after the test.
    """
    import time

    deadline = time.monotonic() + 180
    while not CHROMIUM.exists() and time.monotonic() < deadline and _installer_running():
        time.sleep(3)
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found: run scripts/install-test-deps.sh (make test-deps)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            missing = "the playwright Python package is missing: pip install -e '.[dev]'"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
