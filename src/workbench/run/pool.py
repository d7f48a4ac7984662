"""Run prepared jobs N at a time with a progress bar, and print the summary table.

Each job runs in a worker process (``run.workers``: forked before the store is opened) and
starts its own kernel; its environment travels with the job, so a worker can run many jobs
one after another. One job's failure is just a result; a worker process that dies takes only
its own job with it (KILLED, "worker process died"; never run again). A signal ends the jobs
running KILLED and starts no other. With one job slot everything runs in this process.
What the tables print has secrets masked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from workbench.core.secrets import scrub, secret_values
from workbench.run.jobs import Job, JobResult, project_relative
from workbench.run.workers import Pool, work

__all__ = ["Pool", "print_summary", "run_all"]


def progress_bar():
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


def describe(r: JobResult) -> str:
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
    with progress_bar() as progress:
        task = progress.add_task("starting", total=len(jobs))

        def record(i: int, r: JobResult) -> None:
            results[i] = r
            progress.update(task, advance=1, description=describe(r))

        if slots == 1 or len(jobs) == 1:
            if pool is not None:
                pool.close()
            for i, job in enumerate(jobs):
                record(i, work(job))
        else:
            pool = pool or Pool(min(slots, len(jobs)), notebooks=[j.notebook for j in jobs])
            try:
                for group in groups:
                    pool.run(jobs, group, record)
            finally:
                pool.close()
    return [r for r in results if r is not None]


def print_summary(results: list[JobResult]) -> None:
    """The summary table: label, status, duration, key metric, run id, report path."""
    from rich.console import Console
    from rich.markup import escape
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
        why = escape(scrub(r.reason, secret_values(r.job.parameters)))
        console.print(
            f"[bold red]{r.status}[/] {escape(Path(r.job.notebook).stem)}-{r.job.label}: {why}",
            highlight=False,
        )
