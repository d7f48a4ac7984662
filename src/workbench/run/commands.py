"""The two commands that execute notebooks: ``workbench run`` (one) and ``workbench batch``.

Both check every parameter before anything starts (exit 2, nothing written), execute with
``runner.execute`` (one MLflow run per execution, ended truthfully), print what happened
and rebuild the report index. Exit codes: 0 all FINISHED, 1 something failed, 128 + the
signal's number when SIGTERM, SIGHUP or Ctrl-C stopped them (``run.signals``: every run
is ended KILLED with the reason and every kernel shut down first). What they print has
secrets masked. ``workbench run`` takes papermill's options with papermill's meanings
(``-k``, ``--cwd``, ``-y``, ``-r``, ``--prepare-only``, ``--log-output``, ``--start-timeout``,
``--report-mode``); parameters win in papermill's order: ``-f`` files, ``-y`` YAML, ``-p``,
``-r``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.core.config import get_settings, run_url
from workbench.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from workbench.core.secrets import redact, scrub, secret_values
from workbench.run import agent, batch, reports, runner, signals, startup
from workbench.run.jobs import Job, JobResult, RunOptions, prepare_job

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from workbench.run.pool import Pool


def run_command(
    notebook: str,
    *,
    parameters: list[list[str]],
    params_files: list[str],
    experiment: str | None,
    timeout: float | None,
    label: str | None,
    parameters_yaml: Sequence[str] = (),
    parameters_raw: Sequence[Sequence[str]] = (),
    options: RunOptions | None = None,
    prepare_only: bool = False,
) -> int:
    """``workbench run``: validate, execute, report. 0 ok, 1 failed, 128 + N on signal N;
    UsageError for bad input. ``prepare_only``: write the parameterized notebook, no kernel,
    no run."""
    prepare = functools.partial(
        prepare_run_job, notebook, parameters, params_files, experiment, timeout, label,
        parameters_yaml=parameters_yaml, parameters_raw=parameters_raw, options=options,
    )  # fmt: skip
    if prepare_only:
        startup.skip_slow_imports()
        out = runner.prepare_only(prepare())
        print(f"prepared: {out}\n  parameters injected; nothing ran, no run was created")
        return EXIT_OK
    with signals.handled():
        return _run(prepare)


def _run(prepare: Callable[[], Job]) -> int:
    import gc

    startup.skip_slow_imports()

    # First of all: fork the store agent, which imports MLflow on the other core while this
    # process checks the parameters and starts the kernel (it writes nothing until `begin`).
    side = agent.open_store()
    gc.disable()  # start-up is imports (papermill, nbconvert): the collector only slows them
    stop: signals.Terminated | None = None
    try:
        job = prepare()
        signals.check()  # a signal meanwhile: stop before any run or kernel exists
        on_run = lambda _run_id: gc.enable()  # noqa: E731
        result = runner.execute(job, store=side, recover=True, rebuild_index=True, on_run=on_run)
    except signals.Terminated as exc:
        stop, result = exc, exc.result
    finally:
        gc.enable()
        side.close()
    stop = stop or signals.stopping()
    if result is not None:
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            print_result(result)
    if startup.is_command_process():
        gc.freeze()  # the exit's final collections would walk every object: 0.2 s for nothing
    if stop is not None:
        _say_stopped(stop, "run")
        return stop.exit_code
    return EXIT_OK if result.status == "FINISHED" else EXIT_FAILED


def _say_stopped(stop: signals.Terminated, command: str) -> None:
    with contextlib.suppress(OSError):
        print(f"workbench {command}: {stop.reason}", file=sys.stderr)


def prepare_run_job(
    notebook: str,
    parameters: list[list[str]],
    params_files: list[str],
    experiment: str | None,
    timeout: float | None,
    label: str | None,
    *,
    parameters_yaml: Sequence[str] = (),
    parameters_raw: Sequence[Sequence[str]] = (),
    options: RunOptions | None = None,
) -> Job:
    """The job ``workbench run`` was asked for. Papermill's order: ``-y`` mappings over the
    files, ``-p`` (converted to the declared type) over those, ``-r`` (kept as text) last."""
    raw = {name: value for name, value in parameters_raw}
    texts = [(name, value) for name, value in parameters if name not in raw]
    values = {**yaml_parameters(parameters_yaml), **raw}
    given = {**values, **dict(texts)}
    job = prepare_job(
        notebook,
        texts=texts,
        values=values,
        params_files=params_files,
        experiment=experiment,
        timeout=timeout,
        label=label,
        label_values=given if given else ({} if params_files else None),
        options=options,
    )
    return job


def yaml_parameters(texts: Sequence[str]) -> dict:
    """The mappings given with ``-y`` (papermill's ``--parameters_yaml``), merged in order."""
    import yaml

    merged: dict = {}
    for text in texts:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"-y {text!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict | None):
            raise UsageError(f"-y takes a YAML mapping such as '{{alpha: 0.1}}', got {text!r}")
        merged.update(data or {})
    return merged


def print_result(r: JobResult, file=None) -> None:
    from workbench.core import store

    file = file or sys.stdout
    settings = get_settings()
    exp_id = r.job.experiment_id or store.experiment_id(r.job.experiment, settings)
    print(f"run {r.run_id}  {r.status}  {r.duration:.1f} s", file=file)
    if r.reason:
        print(f"  why:        {scrub(r.reason, secret_values(r.job.parameters))}", file=file)
    print(f"  experiment: {r.job.experiment}", file=file)
    if r.report:
        rep = Path(r.report)
        print(f"  report:     {rep.with_suffix('.html')}  (notebook: {rep.name})", file=file)
    print(f"  mlflow:     {run_url(exp_id, r.run_id, settings)}", file=file)


def batch_command(
    paths: list[str],
    *,
    jobs: int,
    resume: bool,
    dry_run: bool,
    timeout: float | None,
    cluster: str | None = None,
) -> int:
    """``workbench batch``: plan every job (nothing runs on a bad one), skip what --resume
    finds FINISHED, run the rest ``jobs`` at a time, print the summary. On SIGTERM, SIGHUP
    or Ctrl-C the jobs running end KILLED, the others do not start (exit 128 + N).
    With a Dask scheduler (``cluster``, or the configured one) the jobs run on its workers
    (``run.cluster``)."""
    from workbench.run import cluster as dask_cluster

    address = dask_cluster.resolve_address(cluster)
    with signals.handled():
        if address:
            return dask_cluster.batch_command(
                paths, address, resume=resume, dry_run=dry_run, timeout=timeout
            )
        return _batch(paths, jobs, resume, dry_run, timeout)


def _batch(paths: list[str], jobs: int, resume: bool, dry_run: bool, timeout: float | None) -> int:
    import gc

    startup.skip_slow_imports()
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    todo, stages = batch.plan_stages(paths, timeout)
    if dry_run and not resume:
        batch.print_plan(_shown(todo), set())
        return EXIT_OK
    from workbench.core import store
    from workbench.run import pool as batch_pool

    pool = _fork_pool(jobs, todo, dry_run)
    try:
        client = store.connect(activate=False)
        _sweep(client, "its runner process is gone")
        skipped = batch.already_finished(client, todo, resume)
        if dry_run:
            batch.print_plan(_shown(todo), skipped)
            return EXIT_OK

        run_idx = [i for i in range(len(todo)) if i not in skipped]
        ran = batch_pool.run_all(
            [todo[i] for i in run_idx], jobs, [stages[i] for i in run_idx], pool=pool
        )
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    results = dict(zip(run_idx, ran, strict=True))
    _sweep(client, "its worker process died")  # runs of a worker that died mid-job
    skip = "already FINISHED (--resume)"
    ordered = [
        results.get(i) or runner.JobResult(j, "SKIPPED", reason=skip) for i, j in enumerate(todo)
    ]
    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        batch_pool.print_summary(ordered)
    reports.rebuild_index()
    if startup.is_command_process():
        gc.freeze()  # skip the exit's final walk over every object
    if (stop := signals.stopping()) is not None:
        _say_stopped(stop, "batch")
        return stop.exit_code
    return EXIT_OK if all(r.ok for r in ordered) else EXIT_FAILED


def _sweep(client: MlflowClient, why: str) -> None:
    """Mark KILLED the runs dead runners left RUNNING, and say so (and what it could not)."""
    from workbench.run import recovery

    notes: list[str] = []
    for run_id in recovery.recover_stale_runs(client, notes=notes):
        print(f"marked run {run_id} KILLED: {why}", file=sys.stderr)
    for note in notes:
        print(note, file=sys.stderr)


def _shown(todo: list[Job]) -> list[Job]:
    """The jobs as the plan may show them: parameters with secrets masked."""
    return [dataclasses.replace(j, parameters=redact(j.parameters)) for j in todo]


def _fork_pool(jobs: int, todo: list[Job], dry_run: bool) -> Pool | None:
    """The worker pool when jobs will run in parallel, else None.

    Workers are forked before this process opens the store (see ``pool.Pool``).
    """
    import gc

    from workbench.run import pool as batch_pool

    if dry_run or jobs < 2 or len(todo) < 2:
        return None
    gc.disable()  # start-up is imports: the cyclic collector only slows them down
    try:
        return batch_pool.Pool(min(jobs, len(todo)), notebooks=[j.notebook for j in todo])
    finally:
        gc.enable()
