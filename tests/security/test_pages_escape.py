"""The report index escapes everything it did not write itself.

Anyone who can write to a shared store can tag a run ``workbench.runner=papermill`` and put
markup into its fields; every colleague who opens runs_reports/index.html would then run it.
Here a run carries a script payload in every field the index shows, the index is built from
the real store and opened in a real browser: no payload runs, every one reads as text.
"""

from __future__ import annotations

import json

import pytest

from workbench.core import names, store
from workbench.core.config import get_settings
from workbench.run import reports

PAYLOAD = '<img src=x onerror="window.__pwned=(window.__pwned||0)+1">'


@pytest.fixture
def project(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROJECT_DIR", str(tmp_path))
    return tmp_path


def _hostile_run() -> str:
    client = store.connect()
    exp = store.experiment_id(f"exp {PAYLOAD}")
    run = client.create_run(
        exp,
        tags={
            names.TAG_RUNNER: "papermill",
            "mlflow.source.name": f"notebooks/{PAYLOAD}.ipynb",
            names.TAG_LABEL: f"label {PAYLOAD}",
            names.TAG_PARAMS: json.dumps(
                {f"k{PAYLOAD}": f"v{PAYLOAD}", "db_url": "postgresql://u:hunter22@h/d"}
            ),
            names.TAG_REASON: f"why {PAYLOAD}",
            names.TAG_REPORT_HTML: f"runs_reports/{PAYLOAD}.html",
            names.TAG_REPORT: "javascript:alert(1)",
            names.TAG_METRIC: PAYLOAD,
        },
    )
    client.log_metric(run.info.run_id, "val_roc_auc", 0.5)
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def test_index_html_shows_markup_as_text_in_a_real_browser(project, chromium):
    _hostile_run()
    index = reports.build_index()
    text = index.read_text()
    assert PAYLOAD not in text, "a field reached index.html unescaped"
    assert "hunter22" not in text, "a URL password reached index.html"
    page = chromium.new_page()
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("window.__pwned || 0") == 0, "markup from the store ran in the index"
    assert page.locator("img").count() == 0
    shown = page.inner_text("body")
    for field in ("exp ", "label ", "why ", "notebooks/"):
        assert f"{field}{PAYLOAD}" in shown or field in shown
    assert shown.count(PAYLOAD) >= 4, "each hostile field is shown as plain text"
    hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))")
    assert not any(h and h.lower().startswith("javascript:") for h in hrefs), hrefs


def test_index_md_carries_no_raw_markup(project):
    _hostile_run()
    reports.build_index()
    md = (get_settings().reports_dir / "index.md").read_text()
    assert "<img" not in md and "hunter22" not in md
