"""``workbench batch --cluster`` as a user types it: documents in order, every run FINISHED
with its reports as artifacts on the server, credentials kept out of command lines and logs,
``--resume`` / ``--dry-run`` as for a local batch, ``workbench report`` from the server, and
a local store refused before anything runs."""

from __future__ import annotations

import psutil
from cluster_servers import NOTEBOOKS, write_batch

from workbench.core import names
from workbench.run import cluster_runs

PASSWORD = "pw-never-shown-4711"


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=500)


def test_a_batch_runs_on_the_cluster_like_a_local_batch(
    project, dask_cluster, cli, experiment_name, mlflow_server
):
    import mlflow

    path = write_batch(
        project,
        "two-docs.yaml",
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: {experiment_name}\n"
        "grid: {lr: [0.1, 0.2]}\n---\n"
        f"notebook: {NOTEBOOKS / 'plain.ipynb'}\nexperiment: {experiment_name}\n",
    )
    # A server without auth ignores credentials: they only have to travel, unseen.
    creds = {"MLFLOW_TRACKING_USERNAME": "carol", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    out = cli("batch", str(path), "--cluster", dask_cluster.address, env=creds)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "3 job(s): 3 ok, 0 failed" in out.stdout

    client = mlflow.MlflowClient()
    runs = _runs(client, experiment_name)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    for run in runs:
        arts = {a.path.rsplit(".", 1)[1] for a in client.list_artifacts(run.info.run_id, "report")}
        assert arts == {"ipynb", "html"}
        assert run.data.tags[cluster_runs.TAG_WORKER] in ("w1", "w2")
    first = [r for r in runs if "tracked" in r.data.tags["mlflow.source.name"]]
    second = [r for r in runs if "plain" in r.data.tags["mlflow.source.name"]]
    assert second[0].info.start_time >= max(r.info.end_time for r in first)  # in order

    _nothing_shows(PASSWORD, out.stdout + out.stderr, dask_cluster)

    again = cli("batch", str(path), "--cluster", dask_cluster.address, "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("SKIPPED") == 3 and len(_runs(client, experiment_name)) == 3
    plan = cli("batch", str(path), "--cluster", dask_cluster.address, "--dry-run", "--resume")
    assert plan.returncode == 0 and plan.stdout.count("skip (FINISHED)") == 3, plan.stdout

    report = cli("report")
    assert report.returncode == 0, report.stderr
    index = (project / "runs_reports" / "index.html").read_text()
    for run in runs:
        link = run.data.tags[names.TAG_REPORT_HTML]
        assert link.startswith(f"{mlflow_server.url}/#/experiments/")
        assert f'href="{link}"' in index


def _nothing_shows(secret: str, output: str, cluster) -> None:
    """The secret is in no output, log, or command line of the cluster's processes."""
    assert secret not in output
    for log in cluster.folder.rglob("*.log"):
        assert secret not in log.read_text(errors="replace"), log
    for proc in [cluster.scheduler, *cluster.workers]:
        p = psutil.Process(proc.pid)
        for q in [p, *p.children(recursive=True)]:
            assert secret not in " ".join(q.cmdline())


def test_a_local_store_is_refused_before_anything_runs(tmp_path, cli, experiment_name):
    db = tmp_path / "local.db"
    path = write_batch(
        tmp_path,
        "b.yaml",
        f"notebook: {NOTEBOOKS / 'tracked.ipynb'}\nexperiment: {experiment_name}\n",
    )
    out = cli(
        "batch", str(path), "--cluster", "tcp://127.0.0.1:9",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "workbench server start" in out.stderr and "MLFLOW_TRACKING_URI=http://" in out.stderr
    assert not db.exists()  # nothing ran, nothing was created
