"""Run prepared jobs N at a time with a progress bar, and print the summary table.

Each job runs in a worker process (forked before the store is opened, see ``Pool``) and
starts its own kernel; its environment travels
with the job, so a worker can run many jobs one after another. One job's failure is just a
result; a worker process that dies takes only its own job with it (the pool is rebuilt for
the jobs that had not finished). With one job slot everything runs in this process.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from workbench.core import mlflow_compat
from workbench.run import runner, startup
from workbench.run.jobs import Job, JobResult, project_relative


def _worker_init() -> None:
    import gc
    import logging
    import signal

    gc.enable()  # a fork pool's workers inherit the parent's paused collector

    startup.skip_slow_imports()
    _forget_inherited_connections()
    logging.getLogger("papermill").setLevel(logging.ERROR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _forget_inherited_connections() -> None:
    """In a forked worker, give MLflow's cached SQLAlchemy engines fresh connection pools
    without closing the parent's connections (SQLAlchemy's advice for fork)."""
    for engine in mlflow_compat.cached_engines():
        engine.dispose(close=False)


def _work(job: Job) -> JobResult:
    try:
        return runner.execute(job)
    except Exception as exc:  # report it as this job's failure, never crash the pool
        return JobResult(job, "FAILED", reason=f"runner error: {type(exc).__name__}: {exc}")


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=False,
    )


def _describe(r: JobResult) -> str:
    return f"{Path(r.job.notebook).stem}-{r.job.label}: {r.status}"


def run_all(
    jobs: list[Job], slots: int, stages: list[int] | None = None, pool: Pool | None = None
) -> list[JobResult]:
    """Run every job; return one result per job, in the order of ``jobs``.

    ``stages[i]`` orders the jobs: all jobs of a stage finish before the next stage starts
    (a batch file's documents are stages, so a demo can run notebooks in order), and the
    jobs within a stage share the ``slots``. ``pool`` is one opened early by ``Pool``.
    """
    if not jobs:
        if pool is not None:
            pool.close()
        return []
    stages = stages or [0] * len(jobs)
    groups = [[i for i in range(len(jobs)) if stages[i] == s] for s in sorted(set(stages))]
    results: list[JobResult | None] = [None] * len(jobs)
    with _progress() as progress:
        task = progress.add_task("starting", total=len(jobs))

        def record(i: int, r: JobResult) -> None:
            results[i] = r
            progress.update(task, advance=1, description=_describe(r))

        if slots == 1 or len(jobs) == 1:
            if pool is not None:
                pool.close()
            for i, job in enumerate(jobs):
                record(i, _work(job))
        else:
            pool = pool or Pool(min(slots, len(jobs)))
            try:
                for group in groups:
                    lost = pool.run(jobs, group, record)
                    if lost:  # a worker process died: one more try in a fresh pool
                        pool.close()
                        pool = Pool(min(slots, len(lost)), fork=False)
                        for i in pool.run(jobs, lost, record):
                            died = JobResult(jobs[i], "FAILED", reason="its worker died twice")
                            record(i, died)
            finally:
                pool.close()
    return [r for r in results if r is not None]


def _preload() -> None:
    """Import what every job needs once, so forked workers start with it loaded."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import nbclient  # noqa: F401
    import papermill  # noqa: F401
    from nbconvert import HTMLExporter  # noqa: F401

    from workbench import tracking  # noqa: F401


class Pool:
    """A process pool that runs groups of jobs and survives a worker's death.

    On Linux the workers are forked right away, after the heavy imports and before this
    process opens the store (no connections or threads to inherit): each starts in
    milliseconds instead of re-importing MLflow, papermill and nbconvert (seconds each).
    Elsewhere, or when asked, it uses clean ``spawn`` workers.
    """

    def __init__(self, workers: int, fork: bool = True):
        import gc
        import multiprocessing
        import threading

        fork = fork and sys.platform == "linux" and threading.active_count() == 1
        if fork:
            _preload()
            # Fails here, in the parent, if MLflow no longer exposes its engine cache: a
            # worker that cannot reset inherited connections must not be forked at all.
            mlflow_compat.cached_engines()
            # Imported modules live as long as the workers: keep the collector off them
            # (and off their memory pages, which the forked workers then share unchanged).
            gc.freeze()
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        self.executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_init
        )
        self.executor.submit(int)  # a fork pool starts all its workers on the first task

    def run(self, jobs: list[Job], todo: list[int], record) -> list[int]:
        """Run ``todo`` (indexes into jobs); return those lost to a broken pool."""
        lost: list[int] = []
        futures: dict[Future, int] = {self.executor.submit(_work, jobs[i]): i for i in todo}
        for fut in as_completed(futures):
            try:
                record(futures[fut], fut.result())
            except BrokenProcessPool:
                lost.append(futures[fut])
        return lost

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def print_summary(results: list[JobResult]) -> None:
    """The summary table: label, status, duration, key metric, run id, report path."""
    from rich.console import Console
    from rich.table import Table

    from workbench.run.reports import format_metric, key_metric

    failed = [r for r in results if not r.ok]
    title = f"{len(results)} job(s): {len(results) - len(failed)} ok, {len(failed)} failed"
    table = Table(title=title, title_justify="left")
    for col in ("notebook", "label", "status", "duration", "key metric", "run id", "report"):
        table.add_column(col, overflow="fold")
    for r in results:
        km = key_metric(r.metrics, r.job.metric)
        style = {"FINISHED": "green", "SKIPPED": "dim"}.get(r.status, "bold red")
        report = project_relative(Path(r.report).with_suffix(".html")) if r.report else ""
        table.add_row(
            Path(r.job.notebook).stem,
            r.job.label,
            f"[{style}]{r.status}[/]",
            f"{r.duration:.1f} s" if r.duration else "",
            f"{km[0]}={format_metric(km[1])}" if km else "",
            r.run_id or "",
            report,
        )
    console = Console(width=None if sys.stdout.isatty() else 220)
    console.print(table)
    for r in failed:
        console.print(
            f"[bold red]{r.status}[/] {Path(r.job.notebook).stem}-{r.job.label}: {r.reason}",
            highlight=False,
        )
