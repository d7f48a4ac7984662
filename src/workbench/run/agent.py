"""The store side of one runner execution: create its MLflow run, and end it truthfully.

Creating a run needs MLflow imported (about 1.2 s here) and the store opened (about 1 s
more: SQLAlchemy models, alembic), all CPU-bound Python that would hold the runner's GIL.
``workbench run`` therefore forks an *agent* as its first act: the agent imports MLflow on
the second core while the runner checks the parameters, starts the kernel and warms the HTML
exporter. The agent touches the store only when told to ``begin`` (after the parameters were
accepted), and ends the run when told to ``finish``; if the runner dies in between, it marks
the run KILLED itself. It ignores SIGINT, SIGTERM and SIGHUP: sent to the whole process
group (Ctrl-C, a closed terminal, a cancelled CI job), they are the runner's to handle, and
the runner then has the agent record the run's end. Where MLflow is loaded already (batch
workers, an interactive caller) or forking is not safe (threads running, not Linux),
``LocalRunStore`` does the same work on a thread in-process. Either way ``begin`` returns a
future, so the kernel starts meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.run.jobs import Job


@dataclass
class Begun:
    """A run the store created for one execution."""

    run_id: str
    experiment_id: str
    recovered: list[str] = field(default_factory=list)  # stale runs marked KILLED first
    notes: list[str] = field(default_factory=list)  # stale runs the sweep could not change


@dataclass
class Ending:
    """What the store records when an execution is over (the kernel is gone)."""

    run_id: str
    status: str
    reason: str
    duration: float
    artifacts: list[str]  # files logged under the run's ``report/`` folder
    rebuild_index: bool = False


@dataclass
class Ended:
    reason: str  # the reason, with any problem logging the report appended
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)  # problems worth a line on stderr


# ------------------------------------------------------------------ the work itself


def begin_run(job: Job, tags: dict[str, str], run_name: str, recover: bool) -> Begun:
    """Open the store, sweep runs of dead runners (when asked) and create the run."""
    from workbench.core import store
    from workbench.run import recovery

    client = store.connect(activate=False)
    notes: list[str] = []
    recovered = recovery.recover_stale_runs(client, notes=notes) if recover else []
    exp_id = job.experiment_id or store.experiment_id(job.experiment)
    run_id = client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id
    return Begun(run_id, exp_id, recovered, notes)


def end_run(e: Ending) -> Ended:
    """Log the report files, record duration and reason, and set the final status."""
    from workbench.core import names, store

    client = store.connect(activate=False)
    reason, notes = e.reason, []
    try:
        for path in e.artifacts:
            if os.path.exists(path):
                client.log_artifact(e.run_id, path, artifact_path="report")
    except Exception as exc:  # a report problem must not leave the run RUNNING
        reason = (reason + "; " if reason else "") + f"report not logged: {exc}"
    client.set_tag(e.run_id, names.TAG_DURATION, f"{e.duration:.2f}")
    if reason:
        client.set_tag(e.run_id, names.TAG_REASON, reason[:5000])
    client.set_terminated(e.run_id, e.status)
    try:
        end_children(client, e.run_id, e.status, reason)
    except Exception as exc:  # said, never silent: the execution's own run is recorded
        notes.append(f"note: could not end the runs this notebook left RUNNING: {exc}")
    try:
        metrics = dict(client.get_run(e.run_id).data.metrics)
    except Exception:  # metrics are for the summary only
        metrics = {}
    if e.rebuild_index:
        try:
            from workbench.run import reports

            reports.build_index()
        except Exception as exc:  # the run itself is done and recorded
            notes.append(f"note: could not rebuild the report index: {exc}")
    return Ended(reason, metrics, notes)


def end_children(client, run_id: str, status: str, reason: str = "") -> list[str]:
    """End the runs the notebook started under the execution's run and left RUNNING (its
    kernel died, or it never ended them): with the execution's status when that is FAILED or
    KILLED, else KILLED; the reason says why. Grandchildren too. Their ids."""
    from workbench.core import names, store

    experiment_id = client.get_run(run_id).info.experiment_id
    ended, parents = [], [run_id]
    while parents:
        parent = parents.pop()
        query = f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
        for child in list(store.iter_runs(client, [experiment_id], query)):
            child_id = child.info.run_id
            parents.append(child_id)
            why = f"its notebook execution ended {status}" + (f": {reason}" if reason else "")
            client.set_tag(child_id, names.TAG_REASON, why[:5000])
            client.set_terminated(child_id, status if status in ("FAILED", "KILLED") else "KILLED")
            ended.append(child_id)
    return ended


def mark_killed(run_id: str, why: str, only_running: bool = False) -> str | None:
    """End a run KILLED with ``why`` as its reason (with ``only_running``, only when it is
    still RUNNING). Returns the problem when the store refused, after putting it in the run's
    reason if it could: never raises, never fails silently (the caller prints it)."""
    from workbench.core import names, store

    try:
        client = store.connect(activate=False)
        if only_running and client.get_run(run_id).info.status != "RUNNING":
            return None
        client.set_tag(run_id, names.TAG_REASON, why)
        client.set_terminated(run_id, "KILLED")
        end_children(client, run_id, "KILLED", why)
        return None
    except Exception as exc:
        problem = f"could not mark run {run_id} KILLED ({why}): {type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):  # the tag may still take it when the status did not
        client.set_tag(run_id, names.TAG_REASON, f"{why}; {problem}"[:5000])
    return problem


# ------------------------------------------------------------------ in-process


class LocalRunStore:
    """The store work in this process; ``begin`` runs on a thread."""

    def begin(self, job: Job, tags: dict[str, str], run_name: str, recover: bool) -> Future:
        fut: Future = Future()

        def work() -> None:
            try:
                fut.set_result(begin_run(job, tags, run_name, recover))
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=work, name="workbench-begin-run", daemon=True).start()
        return fut

    def end(self, ending: Ending) -> Ended:
        return end_run(ending)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ forked agent


class AgentError(RuntimeError):
    """The agent process failed or went away; the message says what it reported."""


def _send(conn, message: tuple) -> None:
    with contextlib.suppress(OSError):  # the runner is gone: the next receive ends the loop
        conn.send(message)


def _agent_main(conn, other, runner_pid: int) -> None:
    """The agent's life: preload MLflow, then serve begin / end until told to quit."""
    other.close()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the runner's to handle
        signal.signal(sig, signal.SIG_IGN)
    # Importing MLflow allocates millions of objects that all stay alive: the cyclic
    # collector's passes over them cost a quarter of the import time. Off until the run
    # exists (the agent is short-lived and allocates little afterwards).
    gc.disable()
    with contextlib.suppress(Exception):  # an import error shows again when work is asked
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    run_id, ended = None, False
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "quit":
            break
        try:
            if kind == "begin":
                begun = begin_run(*payload)
                run_id = begun.run_id
                _send(conn, ("ok", begun))
                gc.freeze()
                gc.enable()
                with contextlib.suppress(Exception):  # the index, while the notebook runs
                    import workbench.run.reports  # noqa: F401
            elif kind == "end":
                done = end_run(payload)
                ended = True  # only once the status is recorded: else the KILLED fallback runs
                _send(conn, ("ok", done))
        except Exception as exc:
            _send(conn, ("error", f"{type(exc).__name__}: {exc}"))
    if run_id is not None and not ended:  # the runner died before ending its run
        problem = mark_killed(run_id, f"runner process {runner_pid} died before ending the run")
        if problem:
            with contextlib.suppress(OSError):  # the terminal may be gone with the runner
                print(f"workbench run: {problem}", file=sys.stderr, flush=True)


class AgentRunStore:
    """The store work in a process forked now, before MLflow is imported anywhere."""

    def __init__(self) -> None:
        from multiprocessing.connection import Pipe

        self.conn, child = Pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        runner_pid = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the agent
            code = 0
            try:
                _agent_main(child, self.conn, runner_pid)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self._lock = threading.Lock()
        self._asked = False  # no request yet: the agent has written nothing

    def _ask(self, kind: str, payload: Any) -> Any:
        with self._lock:  # one request at a time, each answered before the next
            self._asked = True
            try:
                self.conn.send((kind, payload))
                status, value = self.conn.recv()
            except (EOFError, OSError) as exc:
                raise AgentError(f"the run store process {self.pid} went away") from exc
        if status != "ok":
            from workbench.core.store import StoreError

            raise StoreError(value)
        return value

    def begin(self, job: Job, tags: dict[str, str], run_name: str, recover: bool) -> Future:
        fut: Future = Future()

        def work() -> None:
            try:
                fut.set_result(self._ask("begin", (job, tags, run_name, recover)))
            except BaseException as exc:
                fut.set_exception(exc)

        threading.Thread(target=work, name="workbench-begin-run", daemon=True).start()
        return fut

    def end(self, ending: Ending) -> Ended:
        return self._ask("end", ending)

    def close(self) -> None:
        """Let the agent go and reap it (it exits at once when told)."""
        if self.pid <= 0:
            return
        if not self._asked:  # e.g. bad parameters: stop it mid-import, it wrote nothing
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        try:
            with self._lock:
                self.conn.send(("quit", None))
        except OSError:
            pass
        self.conn.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = 0


def open_store() -> AgentRunStore | LocalRunStore:
    """An agent when forking is safe and worth it, else the in-process store."""
    if sys.platform != "linux" or "mlflow" in sys.modules or threading.active_count() > 1:
        return LocalRunStore()
    try:
        return AgentRunStore()
    except OSError:
        return LocalRunStore()
