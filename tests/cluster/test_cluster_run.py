"""Jobs on a real Dask cluster against a real ``mlflow server``, called as a library:
``cluster.run_all`` returns the same results as the local pool, each run is created and
ended truthfully by the runner on a worker, its reports are artifacts on the server."""

from __future__ import annotations

from pathlib import Path

from cluster_servers import NOTEBOOKS, write_batch

from workbench.run import batch, cluster, cluster_runs, reports, shipping


def test_run_all_runs_each_job_on_a_worker(project, dask_cluster, experiment_name):
    import mlflow

    path = write_batch(
        project,
        "b.yaml",
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {lr: [0.1, 0.2]}\n",
    )
    jobs, stages = batch.plan_stages([str(path)], None)
    mlflow_client = mlflow.MlflowClient()
    batch.already_finished(mlflow_client, jobs, resume=False)
    client = cluster.connect(dask_cluster.address)
    try:
        results = cluster.run_all(jobs, client, stages, batch_id="b-run-all")
    finally:
        client.close()
    assert [r.status for r in results] == ["FINISHED", "FINISHED"], [r.reason for r in results]
    assert [r.job for r in results] == jobs  # the client's own jobs, paths and all
    for r in results:
        run = mlflow_client.get_run(r.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["score"] == r.metrics["score"] == r.job.parameters["lr"] * 3
        tags = run.data.tags
        assert tags[cluster_runs.TAG_BATCH] == "b-run-all"
        assert tags[cluster_runs.TAG_WORKER] in ("w1", "w2")
        assert tags["mlflow.source.name"] == shipping.travel_path(r.job.notebook)
        arts = sorted(a.path for a in mlflow_client.list_artifacts(r.run_id, "report"))
        assert [a.rsplit(".", 1)[1] for a in arts] == ["html", "ipynb"]
        html = mlflow.artifacts.download_artifacts(
            run_id=r.run_id, artifact_path=arts[0], dst_path=str(project / r.run_id)
        )
        assert r.run_id in Path(html).read_text()  # the header names the run
        assert tags["workbench.report.html"].startswith(mlflow.get_tracking_uri())
        name = arts[0].split("/")[1].replace("=", "%3D")
        assert tags["workbench.report.html"].endswith(
            f"/report/{name}?workflowType=machine_learning"
        )

    rows = {row.run_id: row for row in reports.collect_rows()}
    for r in results:
        assert (
            rows[r.run_id].report
            == mlflow_client.get_run(r.run_id).data.tags["workbench.report.html"]
        )
