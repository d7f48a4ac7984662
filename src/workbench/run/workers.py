"""The batch's worker processes: each runs one job at a time and says which run it holds.

``Pool`` starts N workers, each a process with its own pipe. The parent hands a worker one
job; the worker answers with the job's run id as soon as the run exists, and with the result
at the end. So the parent always knows which job and run each worker holds: a worker that
dies (killed, out of memory) costs that job alone, recorded KILLED ("worker process died")
with its run marked KILLED in the store, while the other workers carry on and a fresh one
takes its place. (``concurrent.futures`` cannot tell: one dead worker broke the whole pool
and every job in flight ran again.) The dead worker's kernel dies with it (``run.engine``).

Signals: a worker ends its run KILLED on SIGTERM, SIGHUP or Ctrl-C (``run.signals``), and
the parent forwards the one it got to every busy worker; jobs not started yet never start.
A worker that has not finished ``STOP_GRACE_S`` seconds later is killed, and its run marked
KILLED by the parent.

On Linux the first workers are forked at once, after the heavy imports and before the
parent opens the store (no connections or threads to inherit): each starts in milliseconds
instead of re-importing MLflow, papermill and nbconvert (seconds each), with the HTML
exporter built. Replacements, and workers elsewhere, are clean ``spawn`` processes. The
forked workers share one kernel template (``run.kernels``), started before the parent's
imports so that it imports what the notebooks need on the other core; each worker talks to
it through its own socket, and a worker's death kills the kernels forked for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.core import mlflow_compat, processes
from workbench.run import agent, kernels, runner, signals, startup
from workbench.run.jobs import Job, JobResult

STOP_GRACE_S = 90.0  # for a signalled worker to shut its kernel down and end its run
POLL_S = 0.5  # how often the parent looks for a signal while it waits for workers

Record = Callable[[int, JobResult], None]


# ------------------------------------------------------------------ in a worker


def work(job: Job, on_run: Callable[[str], None] | None = None) -> JobResult:
    """Run one job; its result whatever happens (a signal ends the run KILLED first)."""
    stop = signals.stopping()
    if stop is not None:
        return not_started(job, stop)
    try:
        return runner.execute(job, on_run=on_run)
    except KeyboardInterrupt as exc:  # a signal: the runner ended the run KILLED first
        result = getattr(exc, "result", None)
        why = getattr(exc, "reason", "interrupted (Ctrl-C)")
        return result if result is not None else JobResult(job, "KILLED", reason=why)
    except Exception as exc:  # report it as this job's failure, never crash the worker
        return JobResult(job, "FAILED", reason=f"runner error: {type(exc).__name__}: {exc}")


def not_started(job: Job, stop: signals.Terminated) -> JobResult:
    return JobResult(job, "KILLED", reason=f"not started: {stop.reason}")


def worker_main(conn: Any, modules: list[list] | None = None, shared: tuple = ()) -> None:
    """A worker's life: run the jobs it is given, one at a time, until told to quit.
    ``shared``: (the batch's kernel template, this worker's channel) when it was forked
    after the template started; else it starts its own for ``modules``, what the batch's
    notebooks import."""
    parent = os.getppid()
    # The batch command killed outright: SIGTERM ends a job in flight KILLED (signals), and
    # an idle worker sees its parent gone below (siblings hold the pipe open: no EOF comes).
    processes.die_with_parent(parent, signal.SIGTERM)
    _worker_init(modules, shared)
    with signals.handled():
        while signals.stopping() is None:
            try:
                if not _wait_for_message(conn, parent):
                    break
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if message is None:
                break
            i, job = message
            result = work(job, on_run=lambda run_id, i=i: _tell(conn, ("run", i, run_id)))
            if not _tell(conn, ("done", i, result)):
                break
    kernels.close_template()
    conn.close()


def _wait_for_message(conn: Any, parent: int) -> bool:
    """Wait for the parent's next message; False when the parent is gone."""
    while not conn.poll(1.0):
        if os.getppid() != parent:
            return False
    return True


def _tell(conn: Any, message: tuple) -> bool:
    try:
        conn.send(message)
        return True
    except OSError:  # the parent is gone: nobody to tell
        return False


def _worker_init(modules: list[list] | None, shared: tuple) -> None:
    import gc
    import logging

    gc.enable()  # a forked worker inherits the parent's paused collector
    startup.skip_slow_imports()
    forget_inherited_connections()
    logging.getLogger("papermill").setLevel(logging.ERROR)
    # The template this worker forks its kernels from (run.kernels): the batch's own, which
    # imported what the batch's notebooks import while the parent imported its modules; a
    # replacement worker starts its own. Either way its kernels die with this worker.
    if shared:
        kernels.use_shared_template(*shared)
    else:
        kernels.start_template(modules)


def forget_inherited_connections() -> None:
    """In a forked worker, give MLflow's cached SQLAlchemy engines fresh connection pools
    without closing the parent's connections (SQLAlchemy's advice for fork)."""
    for engine in mlflow_compat.cached_engines():
        engine.dispose(close=False)


# ------------------------------------------------------------------ in the parent


@dataclass
class _Worker:
    proc: Any  # a multiprocessing Process
    conn: Any  # the parent's end of its pipe
    job: int | None = None  # the job it holds
    run_id: str | None = None  # that job's run, once the worker said it exists
    told: bool = False  # a stopping signal was forwarded to it

    @property
    def busy(self) -> bool:
        return self.job is not None


def _preload() -> None:
    """Import what every job needs once, so forked workers start with it loaded."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import nbclient  # noqa: F401
    import papermill  # noqa: F401
    from nbconvert import HTMLExporter  # noqa: F401

    from workbench import tracking  # noqa: F401
    from workbench.run import engine

    engine.warm_exporter(wait=True)  # every worker writes HTML twins with it


def _start(ctx: Any, modules: list[list] | None, shared: tuple = ()) -> _Worker:
    parent, child = ctx.Pipe()
    args = (child, modules, shared)
    proc = ctx.Process(target=worker_main, args=args, name="workbench-batch-worker")
    proc.daemon = True  # an abnormal exit of the parent SIGTERMs it (it ends its run)
    proc.start()
    child.close()
    if shared:
        template, index = shared
        template.hand_over(index)
    return _Worker(proc, parent)


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Pool:
    """N worker processes that run groups of jobs and survive a worker's death."""

    def __init__(self, workers: int, fork: bool = True, notebooks: Any = None):
        """``notebooks``: the jobs' notebooks, whose imports the workers' kernel template
        preloads (``kernels.batch_imports``); None: not known, it imports the usual ones."""
        import gc
        import multiprocessing
        import threading

        fork = fork and sys.platform == "linux" and threading.active_count() == 1
        modules = None if notebooks is None else kernels.batch_imports(notebooks)
        self.template: kernels.Template | None = None
        if fork:
            # One kernel template for every worker, started first: it imports what the
            # notebooks import on one core while this process imports its own on the other.
            self.template = kernels.Template(modules or (), modules is None, channels=workers)
            _preload()
            # Fails here, in the parent, if MLflow no longer exposes its engine cache: a
            # worker that cannot reset inherited connections must not be forked at all.
            mlflow_compat.cached_engines()
            # Imported modules live as long as the workers: keep the collector off them
            # (and off their memory pages, which the forked workers then share unchanged).
            gc.freeze()
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        self.modules = modules
        self.workers = [
            _start(ctx, modules, (self.template, i) if self.template else ())
            for i in range(workers)
        ]
        self._stop_at: float | None = None

    def run(self, jobs: list[Job], todo: list[int], record: Record) -> None:
        """Run ``todo`` (indexes into ``jobs``); each gets exactly one ``record``."""
        queue = deque(todo)
        while queue or any(w.busy for w in self.workers):
            stop = signals.stopping()
            if stop is not None:
                while queue:
                    i = queue.popleft()
                    record(i, not_started(jobs[i], stop))
                self._forward(stop)
            for w in list(self.workers):
                if queue and not w.busy:
                    self._give(w, queue, jobs)
            self._collect(jobs, record)

    def _give(self, w: _Worker, queue: deque, jobs: list[Job]) -> None:
        i = queue.popleft()
        try:
            w.conn.send((i, jobs[i]))
            w.job, w.run_id = i, None
        except OSError:  # it died idle: the job never reached it
            queue.appendleft(i)
            self._replace(w)

    def _collect(self, jobs: list[Job], record: Record) -> None:
        """Wait a little for news from the busy workers; record results and deaths."""
        from multiprocessing.connection import wait

        busy = [w for w in self.workers if w.busy]
        if not busy:
            return
        wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=POLL_S)
        for w in busy:
            self._read(w, record)
            if w.busy and not w.proc.is_alive():
                self._read(w, record)  # what it said before it died
                if w.busy:
                    self._lost(w, jobs, record)

    def _read(self, w: _Worker, record: Record) -> None:
        while w.busy:
            try:
                if not w.conn.poll():
                    return
                kind, i, value = w.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "run":
                w.run_id = value
            else:
                record(i, value)
                w.job, w.run_id = None, None

    def _lost(self, w: _Worker, jobs: list[Job], record: Record) -> None:
        """A worker died holding a job: that job alone ends KILLED, its run too."""
        why = f"worker process died (pid {w.proc.pid}, {_death(w.proc.exitcode)})"
        record(w.job, JobResult(jobs[w.job], "KILLED", run_id=w.run_id, reason=why))
        if w.run_id is not None:
            problem = agent.mark_killed(w.run_id, why, only_running=True)
            if problem:
                print(f"workbench batch: {problem}", file=sys.stderr)
        w.job, w.run_id = None, None
        self._replace(w)

    def _replace(self, w: _Worker) -> None:
        import multiprocessing

        self.workers.remove(w)
        with contextlib.suppress(OSError):
            w.conn.close()
        if signals.stopping() is None:
            self.workers.append(_start(multiprocessing.get_context("spawn"), self.modules))

    def _forward(self, stop: signals.Terminated) -> None:
        """Pass the signal on to the busy workers; kill those that outlive the grace."""
        if self._stop_at is None:
            self._stop_at = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            if w.busy and not w.told:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, stop.signum)
                w.told = True
            elif w.busy and time.monotonic() > self._stop_at:
                w.proc.kill()

    def close(self) -> None:
        """Let the workers go (a busy one is asked to stop first) and reap them."""
        for w in self.workers:
            if w.busy:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGTERM)
            with contextlib.suppress(OSError):
                w.conn.send(None)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            with contextlib.suppress(OSError):
                w.conn.close()
        self.workers = []
        if self.template is not None:
            self.template.close()
            self.template = None
