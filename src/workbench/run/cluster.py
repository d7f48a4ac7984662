"""``workbench batch --cluster tcp://HOST:8786``: a batch's jobs on Dask distributed workers.

The command plans and validates the batch here, exactly as a local batch, then sends each
job to the scheduler as one task (``shipping.run_shipped``: the notebook and parameter files
travel with it) and shows the same progress bar and summary table. Documents of a batch file
run one after another; the jobs of one document run at once on as many workers as there are.

State is shared only through the team's tracking server: a local store (SQLite file, or a
server keeping artifacts on its own disk) is refused before anything runs. A worker that
dies mid-job costs nothing but time: the scheduler runs the task again on another worker,
which first marks the interrupted run KILLED. When the scheduler goes away the command
stops, marks the batch's unfinished runs KILLED, and names the jobs that did not finish
(``--resume`` runs them later: it skips every parameter set that has a FINISHED run).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from workbench.core.config import Settings, get_settings
from workbench.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from workbench.core.secrets import mask_url, redact
from workbench.run import batch, cluster_runs, pool, shipping, signals
from workbench.run.jobs import Job, JobResult

if TYPE_CHECKING:
    from distributed import Client
    from mlflow import MlflowClient

LOCAL = ("", "local", "none")  # `--cluster local` runs on this machine despite the config
CONNECT_TIMEOUT_S = 10.0
WORKER_WAIT_S = 60.0
SETTLE_S = 5.0  # a worker without its scheduler stops its jobs within ~2 s (shipping._Watchdog)
TASK_RETRIES = 1  # a task that raised on the worker (setup, not the notebook) runs once more
UNFINISHED = "did not finish"  # how the reason of a job the lost scheduler took starts
_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|ucx|inproc)://[^\s/]+$|^[^\s/:]+:\d+$")


class SchedulerLost(RuntimeError):
    """The scheduler went away before every job finished."""


def resolve_address(given: str | None, settings: Settings | None = None) -> str | None:
    """The scheduler to use: ``--cluster``, else the configured ``cluster`` (WORKBENCH_CLUSTER
    or ``[tool.workbench] cluster``); None for a local batch."""
    address = given if given is not None else (settings or get_settings()).cluster
    if address is None or address.strip().lower() in LOCAL:
        return None
    address = address.strip()
    if not _ADDRESS.match(address):
        raise UsageError(
            f"--cluster takes a Dask scheduler address like tcp://HOST:8786, got {address!r}"
        )
    return address


def check_store(settings: Settings) -> None:
    """Refuse a tracking store the workers cannot share (UsageError, exit 2)."""
    if settings.is_remote:
        return
    raise UsageError(
        "--cluster needs a tracking server that every worker reaches; the store here is "
        f"local ({mask_url(settings.tracking_uri)}), so the workers' runs would be lost.\n"
        "fix: on a machine the workers reach, `workbench server start --backend-store-uri "
        "postgresql://USER@HOST/mlflow --host 0.0.0.0 --auth`, then "
        "`export MLFLOW_TRACKING_URI=http://HOST:5000` here and run the batch again"
    )


def check_artifacts(client: MlflowClient, experiment_ids: set[str]) -> None:
    """Refuse experiments whose artifacts go to a path on the server's disk (workers on other
    machines cannot write there); proxied ``mlflow-artifacts:`` and object stores are fine."""
    for exp_id in sorted(experiment_ids):
        location = client.get_experiment(exp_id).artifact_location or ""
        if urlsplit(location).scheme in ("", "file"):
            raise UsageError(
                f"the server keeps the artifacts of experiment {exp_id} in a folder on its own "
                f"disk ({location}): workers on other machines cannot log reports there.\n"
                "fix: start the server with proxied artifacts (`workbench server start "
                "--artifacts-destination PATH` does this; `mlflow server --serve-artifacts`)"
            )


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A Dask client for ``address`` with at least one worker; UsageError when there is none."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise UsageError(
            "--cluster needs Dask distributed: pip install 'workbench[cluster]'"
        ) from exc
    # Its "failed to reconnect" lines would only repeat what the command says itself.
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address}: {exc}\n"
            f"fix: start it with `dask scheduler` on that host (port {address.rsplit(':', 1)[-1]}) "
            "and workers with `dask worker ADDRESS --nthreads 1`"
        ) from exc
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError) as exc:
        client.close()
        raise UsageError(
            f"no Dask worker joined the scheduler at {address} within {WORKER_WAIT_S:.0f} s.\n"
            f"fix: start workers with `dask worker {address} --nthreads 1`"
        ) from exc
    return client


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def run_all(
    jobs: list[Job],
    client: Client,
    stages: list[int] | None = None,
    batch_id: str | None = None,
) -> list[JobResult]:
    """Run every job on the cluster; one result per job, in the order of ``jobs``.

    Like ``pool.run_all``: ``stages`` orders the jobs (a stage finishes before the next
    starts). Raises SchedulerLost (with the results so far) when the scheduler went away.
    """
    batch_id = batch_id or new_batch_id()
    env = shipping.client_env()
    shipments = [shipping.pack(j, i, batch_id, env) for i, j in enumerate(jobs)]
    stages = stages or [0] * len(jobs)
    groups = [[i for i in range(len(jobs)) if stages[i] == s] for s in sorted(set(stages))]
    results: list[JobResult | None] = [None] * len(jobs)
    lost: SchedulerLost | None = None
    with pool.progress_bar() as progress:
        task = progress.add_task("starting", total=len(jobs))

        def record(i: int, outcome: shipping.Outcome) -> None:
            outcome.result.job = jobs[i]
            results[i] = outcome.result
            for note in outcome.notes:
                progress.console.print(note, highlight=False)
            progress.update(task, advance=1, description=pool.describe(outcome.result))

        for group in groups:
            try:
                _run_stage(client, shipments, group, record)
            except SchedulerLost as exc:
                lost = exc
                break
    if lost is not None:
        lost.results = results  # type: ignore[attr-defined]
        raise lost
    return [r for r in results if r is not None]


def _run_stage(
    client: Client,
    shipments: list[shipping.Shipment],
    group: list[int],
    record: Callable[[int, shipping.Outcome], None],
) -> None:
    """Submit one stage's jobs and record each outcome as it arrives."""
    from distributed import as_completed

    futures = {
        client.submit(
            shipping.run_shipped,
            shipments[i],
            key=f"workbench-{shipments[i].batch_id}-{i}",
            pure=False,
            retries=TASK_RETRIES,
        ): i
        for i in group
    }
    with signals.interruptible():  # a signal stops the waiting (the tasks are dropped)
        for fut in as_completed(list(futures), loop=client.loop):
            i = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:
                if _scheduler_gone(client, exc):
                    raise SchedulerLost(str(client.scheduler.address)) from exc
                outcome = shipping.Outcome(_task_failure(shipments[i].job, exc))
            record(i, outcome)


def _scheduler_gone(client: Client, exc: BaseException) -> bool:
    from distributed.client import FutureCancelledError

    return isinstance(exc, FutureCancelledError) or client.status not in ("running", "connecting")


def _task_failure(job: Job, exc: BaseException) -> JobResult:
    """The result of a task that raised instead of returning (its workers kept dying, or the
    worker could not even start the job)."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        why = f"its Dask workers kept dying mid-job (the last: {exc.last_worker.address})"
        return JobResult(job, "KILLED", reason=why)
    return JobResult(job, "FAILED", reason=f"worker error: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ the command


def batch_command(
    paths: list[str], address: str, *, resume: bool, dry_run: bool, timeout: float | None
) -> int:
    """``workbench batch --cluster``: check the store, plan, skip what --resume finds
    FINISHED, run the rest on the cluster, print the summary; 0 ok, 1 something failed."""
    from workbench.core import store
    from workbench.run import reports, startup

    startup.skip_slow_imports()
    settings = get_settings()
    check_store(settings)
    todo, stages = batch.plan_stages(paths, timeout)
    if dry_run and not resume:
        batch.print_plan(_shown(todo), set())
        return EXIT_OK
    mlflow_client = store.connect(activate=False)
    skipped = batch.already_finished(mlflow_client, todo, resume)
    check_artifacts(mlflow_client, {j.experiment_id for j in todo if j.experiment_id})
    if dry_run:
        batch.print_plan(_shown(todo), skipped)
        return EXIT_OK
    run_idx = [i for i in range(len(todo)) if i not in skipped]
    jobs, batch_id = [todo[i] for i in run_idx], new_batch_id()
    ran, lost = _run_on_cluster(address, jobs, [stages[i] for i in run_idx], batch_id)
    ran = _close_batch(mlflow_client, address, jobs, ran, batch_id, lost)
    results = dict(zip(run_idx, ran, strict=True))
    skip = "already FINISHED (--resume)"
    ordered = [results.get(i) or JobResult(j, "SKIPPED", reason=skip) for i, j in enumerate(todo)]
    pool.print_summary(ordered)
    reports.rebuild_index()
    if lost:
        _say_unfinished(address, [r for r in ran if r.reason.startswith(UNFINISHED)])
    return EXIT_OK if all(r.ok for r in ordered) else EXIT_FAILED


def _shown(todo: list[Job]) -> list[Job]:
    """The jobs as the plan may show them: parameters with secrets masked."""
    return [dataclasses.replace(j, parameters=redact(j.parameters)) for j in todo]


def _close_batch(
    client: MlflowClient,
    address: str,
    jobs: list[Job],
    ran: list[JobResult | None],
    batch_id: str,
    lost: bool,
) -> list[JobResult]:
    """Mark KILLED what the batch left RUNNING; after losing the scheduler, give every job
    without a result one (FINISHED when its run did finish, else KILLED)."""
    exp_ids = {j.experiment_id for j in jobs if j.experiment_id}
    why = "its Dask worker was lost mid-job"
    if lost:
        why = f"{UNFINISHED}: the Dask scheduler at {address} went away"
        print(
            f"the Dask scheduler at {address} went away: closing the batch's runs", file=sys.stderr
        )
    for run_id in cluster_runs.close_leftovers(
        client, exp_ids, batch_id, why, SETTLE_S if lost else 0.0
    ):
        print(f"marked run {run_id} KILLED: {why}", file=sys.stderr)
    if lost:
        return cluster_runs.reconcile(client, jobs, ran, batch_id, why)
    return [r for r in ran if r is not None]


def _run_on_cluster(
    address: str, jobs: list[Job], stages: list[int], batch_id: str
) -> tuple[list[JobResult | None], bool]:
    """Run the jobs; the results (None for a job that did not finish) and whether the
    scheduler went away."""
    if not jobs:
        return [], False
    client = connect(address)
    lost = False
    try:
        results: list[JobResult | None] = list(run_all(jobs, client, stages, batch_id))
    except SchedulerLost as exc:
        results, lost = exc.results, True  # type: ignore[attr-defined]
    except BaseException:  # Ctrl-C: tasks not started yet are dropped
        _close(client, batch_id, forget=False)
        raise
    _close(client, batch_id, forget=not lost)
    return results, lost


def _close(client: Client, batch_id: str, forget: bool) -> None:
    """Let the workers drop the batch's files, then close the client (quietly)."""
    import contextlib

    if forget:
        with contextlib.suppress(Exception):
            client.run(shipping.forget_batch, batch_id)
    with contextlib.suppress(Exception):
        client.close(timeout=5)


def _say_unfinished(address: str, unfinished: list[JobResult]) -> None:
    from pathlib import Path

    print(
        f"error: lost the Dask scheduler at {address}; {len(unfinished)} job(s) did not finish:",
        file=sys.stderr,
    )
    for r in unfinished:
        print(f"  {Path(r.job.notebook).stem}-{r.job.label}", file=sys.stderr)
    print(
        "fix: once the scheduler and its workers are back, run the same command with --resume "
        "(it skips every parameter set that FINISHED)",
        file=sys.stderr,
    )
