"""The tracking-server side of a cluster batch: the run of each attempt, and the sweeps.

Every run a cluster batch creates carries the batch id, the job's index and the worker
(``TAG_BATCH``, ``TAG_JOB``, ``TAG_WORKER``): its runner lives on another host, so the pid
sweep of ``recovery`` cannot judge it, and these tags are what the next attempt of a job
(``close_earlier_attempts``) and the command at the end of the batch (``close_leftovers``,
``reconcile``) go by. ``ClusterRunStore`` is the runner's store on a worker: it closes what an
earlier attempt left RUNNING, tags the run, points its report tags at the artifacts on the
server, and ends the run KILLED when the worker stopped the job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from workbench.core import names
from workbench.core.config import TRAINING_VIEW, get_settings
from workbench.run import agent
from workbench.run.jobs import Job, JobResult, project_relative

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_BATCH = "workbench.cluster.batch"  # the id of one `workbench batch --cluster` command
TAG_JOB = "workbench.cluster.job"  # the job's index in that batch
TAG_WORKER = "workbench.cluster.worker"  # the Dask worker that ran this attempt


def report_url(tracking_uri: str, experiment_id: str, run_id: str, name: str) -> str:
    """The report's page in the server's UI (the run's artifact view), without credentials."""
    parts = urlsplit(tracking_uri.rstrip("/"))
    base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    run = f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{run}/artifactPath/report/{quote(name)}?{TRAINING_VIEW}"


def close_earlier_attempts(
    client: MlflowClient, experiment_id: str, batch_id: str, index: int, worker: str
) -> list[str]:
    """Mark KILLED the runs an earlier attempt of this job left RUNNING; their ids."""
    from workbench.core import store

    query = (
        f"attributes.status = 'RUNNING' and tags.`{TAG_BATCH}` = '{batch_id}' "
        f"and tags.`{TAG_JOB}` = '{index}'"
    )
    killed = []
    for run in list(store.iter_runs(client, [experiment_id], query)):
        where = run.data.tags.get(TAG_WORKER, "?")
        why = f"its Dask worker {where} was lost mid-job; the job was retried on {worker}"
        client.set_tag(run.info.run_id, names.TAG_REASON, why)
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_id)
    return killed


class ClusterRunStore(agent.LocalRunStore):
    """The in-process store, plus: cluster tags on the run, earlier attempts closed first,
    report tags pointing at the artifacts on the server, the kernel log logged on failure."""

    def __init__(
        self, batch_id: str, index: int, worker: str, stopped: Callable[[], bool] = bool
    ) -> None:
        self.batch_id, self.index, self.worker, self.stopped = batch_id, index, worker, stopped
        self.notes: list[str] = []
        self._reports: dict[str, str] = {}

    def begin(self, job: Job, tags: dict[str, str], run_name: str, recover: bool) -> Future:
        fut: Future = Future()

        def work() -> None:
            try:
                fut.set_result(self._begin(job, tags, run_name))
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=work, name="workbench-begin-run", daemon=True).start()
        return fut

    def _begin(self, job: Job, tags: dict[str, str], run_name: str) -> agent.Begun:
        from mlflow.entities import RunTag

        from workbench.core import store

        client = store.connect(activate=False)
        exp_id = job.experiment_id or store.experiment_id(job.experiment)
        earlier = close_earlier_attempts(client, exp_id, self.batch_id, self.index, self.worker)
        for run_id in earlier:
            self.notes.append(
                f"marked run {run_id} KILLED: its worker was lost mid-job "
                f"(job retried on {self.worker})"
            )
        self._reports = {k: tags.pop(k) for k in (names.TAG_REPORT, names.TAG_REPORT_HTML)}
        tags = {**tags, TAG_BATCH: self.batch_id, TAG_JOB: str(self.index), TAG_WORKER: self.worker}
        begun = agent.begin_run(replace(job, experiment_id=exp_id), tags, run_name, False)
        uri = get_settings().tracking_uri
        links = [
            RunTag(k, report_url(uri, exp_id, begun.run_id, Path(v).name))
            for k, v in self._reports.items()
        ]
        client.log_batch(begun.run_id, tags=links)
        return begun

    def end(self, ending: agent.Ending) -> agent.Ended:
        """End the run KILLED when the worker stopped the job; log the kernel's own log too
        when the runner kept it (named by its artifact path, not a path on this worker)."""
        if self.stopped():
            ending.status = "KILLED"
            ending.reason = (
                f"its Dask worker {self.worker} shut down mid-job (it lost its scheduler?)"
            )
        if ending.artifacts:
            log = Path(ending.artifacts[0]).with_suffix(".kernel.log")
            if log.exists():
                ending.artifacts.append(str(log))
                ending.reason = ending.reason.replace(
                    f"(kernel log: {project_relative(log)})", f"(kernel log: report/{log.name})"
                )
        return agent.end_run(ending)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ on the command's side


def _batch_runs(
    client: MlflowClient, exp_ids: set[str], batch_id: str, status: str | None = None
) -> list:
    from workbench.core import store

    query = f"tags.`{TAG_BATCH}` = '{batch_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return list(store.iter_runs(client, sorted(exp_ids), query))


def close_leftovers(
    client: MlflowClient, exp_ids: set[str], batch_id: str, why: str, settle: float = 0.0
) -> list[str]:
    """Mark KILLED the batch's runs still RUNNING once no task of it runs any more (an attempt
    whose worker died and that no retry closed); their ids.

    With ``settle``, keep sweeping that many seconds: workers that lost their scheduler stop
    within seconds, and a kernel still starting meanwhile may resume (re-open) its run.
    """
    from workbench.core import names

    killed: dict[str, None] = {}
    deadline = time.monotonic() + settle
    while True:
        for run in _batch_runs(client, exp_ids, batch_id, "RUNNING"):
            client.set_tag(run.info.run_id, names.TAG_REASON, why)
            client.set_terminated(run.info.run_id, "KILLED")
            killed[run.info.run_id] = None
        if time.monotonic() >= deadline:
            return list(killed)
        time.sleep(1.0)


def reconcile(
    client: MlflowClient,
    jobs: list[Job],
    results: list[JobResult | None],
    batch_id: str,
    why: str,
) -> list[JobResult]:
    """After the scheduler went away: a job whose result was lost but whose run FINISHED on
    the server counts as FINISHED; every other job without a result did not finish (KILLED,
    with ``why`` and the id of its last run, if it had one)."""
    exp_ids = {j.experiment_id for j in jobs if j.experiment_id}
    finished, last = {}, {}
    for run in sorted(_batch_runs(client, exp_ids, batch_id), key=lambda r: r.info.start_time):
        index = run.data.tags.get(TAG_JOB)
        last[index] = run
        if run.info.status == "FINISHED":
            finished[index] = run
    out = []
    for i, (job, r) in enumerate(zip(jobs, results, strict=True)):
        if r is None and (run := finished.get(str(i))) is not None:
            r = JobResult(job, "FINISHED", run_id=run.info.run_id, metrics=dict(run.data.metrics))
        elif r is None:
            run_id = last[str(i)].info.run_id if str(i) in last else None
            r = JobResult(job, "KILLED", run_id=run_id, reason=why)
        out.append(r)
    return out
