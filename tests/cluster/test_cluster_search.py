"""Search workers on the Dask cluster: ``search.start_workers(..., cluster=...)`` runs
``workbench search-worker`` as tasks that join one study; every trial is a child run of the
study's run on the tracking server, and no URL reaches a command line."""

from __future__ import annotations

import mlflow
import psutil
import pytest

from workbench import search, tracking

pytestmark = pytest.mark.slow


def test_search_workers_on_the_cluster_join_one_study(project, dask_cluster, tmp_path):
    run = tracking.start_run("cluster-search", algorithm="logreg-search")
    storage = f"journal:{tmp_path / 'study.log'}"  # every worker of this cluster sees the path
    study = search.create_study(
        "logistic_regression", storage=storage, n_rows=600, pruner="none", n_trials=4, seed=2
    )
    workers = search.start_workers(study.name, storage, 2, n_trials=2, cluster=dask_cluster.address)
    seen_cmdlines = []
    codes = None
    try:
        for proc in psutil.process_iter(["cmdline"]):
            seen_cmdlines.append(" ".join(proc.info["cmdline"] or []))
        codes = search.wait_workers(workers, timeout=240)
    finally:
        run.end()
    assert codes == [0, 0], codes
    children = search.child_runs(run.run_id)
    assert len(children) >= 4, len(children)
    assert {c.info.status for c in children} <= {"FINISHED", "FAILED"}
    assert all(c.data.tags["mlflow.parentRunId"] == run.run_id for c in children)
    assert not any(str(tmp_path / "study.log") in c for c in seen_cmdlines if "search-worker" in c)
    assert mlflow.get_run(run.run_id).info.status == "FINISHED"
