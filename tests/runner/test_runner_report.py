"""`workbench report`: index.html / index.md from real executions, checked in Chromium."""

from __future__ import annotations

import shutil

import pytest
from runner_helpers import NOTEBOOKS, runs_of

from workbench import cli
from workbench.run import reports


@pytest.fixture
def executed(project, experiment_name):
    """Two real executions in one experiment: one that finishes, then one that fails."""
    plain = project / "plain-copy.ipynb"
    shutil.copy(NOTEBOOKS / "plain.ipynb", plain)
    batch = project / "two.yaml"
    batch.write_text(
        f"notebook: {plain}\nexperiment: {experiment_name}\nlabel: ok\n---\n"
        f"notebook: {NOTEBOOKS / 'raises.ipynb'}\nexperiment: {experiment_name}\nlabel: broken\n"
    )
    assert cli.main(["batch", str(batch), "--jobs", "2"]) == 1  # one job failed
    runs = runs_of(experiment_name)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    return runs


@pytest.mark.slow
@pytest.mark.browser
def test_index_lists_executions_newest_first_with_failures_marked(
    project, executed, chromium, tmp_path
):
    assert cli.main(["report"]) == 0
    index = project / "runs_reports" / "index.html"
    md = (project / "runs_reports" / "index.md").read_text()
    assert "**✗ FAILED**" in md and "✓ FINISHED" in md
    assert md.index("broken") < md.index("| ok |"), "newest first: the second document ran last"
    rows = reports.collect_rows()
    assert [r.label for r in rows] == ["broken", "ok"]
    assert all((index.parent / r.report).exists() for r in rows)

    page = chromium.new_page(viewport={"width": 1400, "height": 600})
    page.goto(index.as_uri())
    body = page.locator("#runs tbody tr.run")
    assert body.count() == 2
    first, second = body.nth(0), body.nth(1)
    assert first.get_attribute("data-status") == "FAILED"
    assert "failed" in (first.get_attribute("class") or "")
    assert "ValueError" in first.inner_text() and "broken" in first.inner_text()
    assert second.get_attribute("data-status") == "FINISHED"
    assert "failed" not in (second.get_attribute("class") or "")
    for i, run in enumerate(r for r in rows):
        row = body.nth(i)
        assert row.get_attribute("data-run-id") == run.run_id
        href = row.locator("a.mlflow").get_attribute("href")
        assert href.endswith(f"/runs/{run.run_id}?workflowType=machine_learning")
    # the report link opens the executed notebook's HTML, with the run id at the top
    first.locator("a.report").click()
    page.wait_for_load_state()
    assert rows[0].run_id in page.content()
    page.go_back()
    shot = tmp_path / "index.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000


def test_the_fast_index_reader_reads_what_mlflow_search_runs_reads(project):
    """The index's SQLite reader against MLflow's API, on runs made to differ: two
    experiments, a NaN metric, a failed run, a deleted run, a run in a deleted experiment,
    and a run without the runner's tag."""
    import json
    import math

    from workbench.core import names, store

    client = store.connect(activate=False)
    tags = {names.TAG_RUNNER: "papermill", names.TAG_LABEL: "x", names.TAG_REASON: "why"}

    def execution(exp: str, i: int, **extra: str) -> str:
        more = {names.TAG_PARAMS: json.dumps({"i": i}), names.TAG_DURATION: f"{i}.5"}
        run = client.create_run(store.experiment_id(exp), tags={**tags, **more, **extra})
        client.log_metric(run.info.run_id, "test_roc_auc", 0.5 + i / 100)
        client.log_metric(run.info.run_id, "loss", math.nan if i == 2 else i)
        client.set_terminated(run.info.run_id, "FAILED" if i == 1 else "FINISHED")
        return run.info.run_id

    kept = [execution("index-a", i) for i in range(3)] + [execution("index-b", 3)]
    client.delete_run(execution("index-a", 4))
    execution("index-gone", 5)
    client.delete_experiment(store.experiment_id("index-gone"))
    client.create_run(store.experiment_id("index-a"), tags={names.TAG_LABEL: "by hand"})

    fast, api = reports.collect_rows(), reports.collect_rows(fast=False)
    assert sorted(r.run_id for r in fast) == sorted(kept)
    key = lambda r: r.run_id  # noqa: E731
    assert sorted(fast, key=key) == sorted(api, key=key)
    assert {r.status for r in fast} == {"FAILED", "FINISHED"}
    assert any("loss=nan" in r.metrics for r in fast)
