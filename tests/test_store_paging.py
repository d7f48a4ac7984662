"""Everything that reads runs back pages through the store: no cut-off at a page's size.

``batch --resume``, the stale-run sweep and the report index once read a single page
(``max_results=5000``); a store with more runs than that resumed wrongly. MLflow pages at
most 1,000 runs a request, so the page size is made small here to cross many pages with a
few hundred real runs in a real SQLite store.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.core import names, store
from workbench.run import batch, recovery, reports


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(store, "PAGE_SIZE", 7)
    monkeypatch.setattr(store, "EXPERIMENTS_PER_QUERY", 2)


def _runner_runs(client, exp_id: str, n: int, status: str, **tags: str) -> list[str]:
    ids = []
    for i in range(n):
        run = client.create_run(
            exp_id,
            tags={names.TAG_RUNNER: "papermill", names.TAG_HASH: f"h{i}", **tags},
        )
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        ids.append(run.info.run_id)
    return ids


def test_resume_sees_every_finished_run_past_the_first_page(tracking_uri, small_pages):
    client = store.connect()
    exp = store.experiment_id("paging-resume")
    _runner_runs(client, exp, 40, "FINISHED")
    _runner_runs(client, exp, 3, "FAILED")  # h0..h2 again, not FINISHED: ignored
    assert batch.finished_hashes(client, exp) == {f"h{i}" for i in range(40)}


def test_every_experiment_and_run_is_read(tracking_uri, small_pages):
    client = store.connect()
    exps = [store.experiment_id(f"paging-{i}") for i in range(9)]
    for exp in exps:
        _runner_runs(client, exp, 4, "FINISHED")
    assert {e.experiment_id for e in store.iter_experiments(client)} >= set(exps)
    assert sum(1 for _ in store.iter_runs(client, exps)) == 36
    assert len(reports.collect_rows(client=client, fast=False)) == 36  # the API's pages
    assert len(reports.collect_rows(client=client)) == 36  # the SQLite reader's queries


def test_the_sweep_reaches_stale_runs_on_later_pages(tracking_uri, small_pages):
    client = store.connect()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = recovery.runner_tags()[names.TAG_HOST]
    exps = [store.experiment_id(f"paging-stale-{i}") for i in range(5)]
    stale = []
    for exp in exps:
        stale += _runner_runs(
            client, exp, 8, "RUNNING", **{names.TAG_PID: str(dead.pid), names.TAG_HOST: host}
        )
    killed = recovery.recover_stale_runs(client)
    assert sorted(killed) == sorted(stale)
    assert {client.get_run(r).info.status for r in stale} == {"KILLED"}
