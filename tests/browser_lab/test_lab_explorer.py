"""JupyterLab in a real browser: notebook 04 runs, the explorer lists the runs the test
logged, and selecting two of them draws their history overlay.

JupyterLab is started by the test on 127.0.0.1 (free port, token) over a copy of the
notebook, with MLFLOW_TRACKING_URI pointing at the test's own store; Debian's chromium is
driven by Playwright (``executable_path``, never a downloaded browser). Every process the
test starts (server, kernels, browser) is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from workbench.core.ports import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
RUN_NAMES = [f"browser-run-{i}" for i in range(6)]

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300)]


def _log_runs(experiment: str) -> None:
    """Six runs the article's way (plain MLflow), with what notebook 04 compares."""
    import mlflow

    mlflow.set_experiment(experiment)
    for i, name in enumerate(RUN_NAMES):
        with mlflow.start_run(run_name=name):
            mlflow.log_params(
                {"model": "gbm" if i % 2 else "logreg", "learning_rate": 0.05 * (i + 1)}
            )
            mlflow.log_metrics({"cv_roc_auc_mean": 0.80 + 0.01 * i, "cv_roc_auc_std": 0.01})
            for step in range(5):
                mlflow.log_metric("val_roc_auc", 0.70 + 0.02 * step + 0.005 * i, step=step)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read() or b"{}")


@pytest.fixture
def lab(tmp_path, tracking_uri):
    """JupyterLab on a copy of notebook 04, with runs logged beforehand."""
    _log_runs("churn-manual")
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "04-compare-runs.ipynb", root)
    token, port = secrets.token_hex(16), free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "WORKBENCH_PROJECT_DIR": str(tmp_path),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    for var in ("WORKBENCH_RUN_ID", "WORKBENCH_WIDGETS"):
        env.pop(var, None)
    log = (tmp_path / "jupyter.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter"),
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI and sessions run as root
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_http(f"{base}/api/status?token={token}", proc=proc, timeout=60):
            raise RuntimeError(
                f"JupyterLab did not start:\n{(tmp_path / 'jupyter.log').read_text()}"
            )
        yield base, token
    finally:
        try:  # shut the kernels down through the API, then the server
            for kernel in _get(f"{base}/api/kernels?token={token}"):
                req = urllib.request.Request(
                    f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE"
                )
                urllib.request.urlopen(req, timeout=10).close()
        except (OSError, TypeError, ValueError):
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_explorer_in_jupyterlab(lab, chromium, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    base, token = lab
    shot = tmp_path / "lab-explorer.png"
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{base}/lab/tree/04-compare-runs.ipynb?token={token}")
        expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
        # JupyterLab may ask which kernel to start: take the proposed one (python3).
        select_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select")
        with contextlib.suppress(PlaywrightTimeout):
            select_kernel.click(timeout=10_000)
        expect(page.locator(".jp-StatusBar-TextItem", has_text="Idle").first).to_be_visible(
            timeout=60_000
        )

        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

        table = page.locator(".wb-runs-table")
        expect(table).to_be_visible(timeout=150_000)
        for name in RUN_NAMES:
            expect(table).to_contain_text(name)

        select = page.locator(".wb-run-select select")
        labels = select.locator("option").all_inner_texts()
        wanted = [
            i
            for i, text in enumerate(labels)
            if text.split()[0] in ("browser-run-5", "browser-run-2")
        ]
        assert len(wanted) == 2, labels
        select.select_option(index=wanted)

        diff = page.locator(".wb-diff")
        expect(diff).to_contain_text("What differs between the two runs", timeout=60_000)
        overlay = page.locator(".wb-overlay")
        overlay.scroll_into_view_if_needed()
        page.wait_for_function(
            "el => el.complete && el.naturalWidth > 200",
            arg=overlay.element_handle(),
            timeout=30_000,
        )
        page.screenshot(path=str(shot))
        # no cell of the notebook failed
        assert (
            page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg"
            ).count()
            == 0
        )
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        if os.environ.get("WORKBENCH_KEEP_SCREENSHOT"):
            shutil.copy(tmp_path / "failure.png", os.environ["WORKBENCH_KEEP_SCREENSHOT"])
        raise
    assert shot.stat().st_size > 10_000
    if os.environ.get("WORKBENCH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["WORKBENCH_KEEP_SCREENSHOT"])
