"""Execute notebooks headlessly with papermill, one MLflow run per execution, ended truthfully.

Measured with plain papermill on MLflow 3.17: a timed-out cell leaves the run FINISHED and a
killed kernel leaves it RUNNING forever. So the runner owns the run: it prepares the
experiment and creates the run while the kernel starts (``run.agent``), hands the
run id to the kernel before the first cell as ``$MLFLOW_RUN_ID``, MLflow's own convention
(plain ``mlflow.start_run()`` and ``workbench.tracking.start_run`` resume it; later top-level
runs become its children: ``tracking.handover``, ``run.engine``), and sets the final status
only after the kernel is gone (MLflow's exit hook in the kernel, or the notebook's own
``end_run()``, would otherwise have the last word): FINISHED, FAILED (a cell raised or
outlived ``--timeout``), KILLED (the kernel died). Runs a dead runner left RUNNING are found
through their runner tags and marked KILLED.

Parameters are checked against the notebook's ``parameters`` cell before any of that
(``run.jobs``, ``run.params``); batches live in ``run.batch``. What the runner writes down
(the parameters tag, the reason, the saved notebook's injected cell) has secrets masked
(``core.secrets``); the kernel gets the real values. A signal to the command
(``run.signals``) ends the run KILLED with the reason, after the kernel is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from workbench.core.config import Settings, get_settings, run_url
from workbench.core.names import (
    ARTIFACT_ENV,
    NOTEBOOK_ENV,
    PARAMS_FILE_ENV,
    PROJECT_ENV,
    RUN_ID_ENV,
    TAG_EXPERIMENT,
    TAG_HASH,
    TAG_LABEL,
    TAG_METRIC,
    TAG_PARAMS,
    TAG_REPORT,
    TAG_REPORT_HTML,
    TAG_RUNNER,
)
from workbench.core.secrets import redact, scrub, secret_values
from workbench.run import recovery
from workbench.run.jobs import (  # noqa: F401 - re-exported: the runner's public names
    Job,
    JobResult,
    derive_label,
    load_params_file,
    param_hash,
    prepare_job,
    project_relative,
    safe_name,
)

HEADER_KEY = "workbench_header"
KERNEL_START_RETRIES = 2
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


# ------------------------------------------------------------------ executing


def _reserve(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = folder / (f"{base}.ipynb" if i == 1 else f"{base}-{i}.ipynb")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot find a free report name for {base} in {folder}")


def header_text(
    job: Job, run_id: str | None, url: str | None, status: str, duration: float | None
) -> str:
    """The report's top cell: run id, status, link to the run (before the run exists: the
    status alone)."""
    done = f" in {duration:.1f} s" if duration is not None else ""
    if run_id is None:
        where = f"experiment `{job.experiment}` · label `{job.label}`"
        return f"**workbench run** — status **{status}**  \n{where}"
    return (
        f"**workbench run** `{run_id}` — status **{status}**{done}  \n"
        f"[Open this run in the MLflow UI]({url}) · experiment `{job.experiment}` · "
        f"label `{job.label}`"
    )


def kernel_env(job: Job, settings: Settings) -> dict[str, str]:
    """The environment this execution's kernel starts with (a copy; os.environ is left
    alone): everything known before the run exists. The run's own variables follow once it
    does (``run_env``)."""
    drop = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", RUN_ID_ENV, PARAMS_FILE_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # MLflow 3.17 unpickles models by default; a notebook loads them through the workbench's
    # checks, so the kernel starts with pickle refused unless the user decided otherwise.
    env.setdefault(PICKLE_ENV, "false")
    env.update(
        {
            NOTEBOOK_ENV: project_relative(Path(job.notebook), settings),
            PROJECT_ENV: str(settings.project_dir),
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
        }
    )
    if settings.artifact_root is not None:
        env[ARTIFACT_ENV] = str(settings.artifact_root)
    if job.params_files:
        env[PARAMS_FILE_ENV] = os.pathsep.join(
            project_relative(Path(f), settings) for f in job.params_files
        )
    return env


def run_env(run_id: str, exp_id: str) -> dict[str, str]:
    """The run's variables in the kernel: MLflow's own ``$MLFLOW_RUN_ID`` (the first
    ``mlflow.start_run()`` resumes it, as in MLflow Projects), ours for
    ``workbench.tracking.start_run``, and the experiment fluent MLflow calls land in."""
    return {"MLFLOW_RUN_ID": run_id, RUN_ID_ENV: run_id, "MLFLOW_EXPERIMENT_ID": exp_id}


def prepare_only(job: Job) -> Path:
    """papermill's ``--prepare-only``: write the notebook with its parameters injected (secrets
    masked, like every notebook the runner writes) beside the reports; no kernel, no run."""
    import logging

    import papermill

    logging.getLogger("papermill").setLevel(logging.ERROR)
    settings = get_settings()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = settings.reports_dir / safe_name(job.experiment)
    out = _reserve(folder, f"{stamp}-{_run_name(job)}-prepared")
    papermill.execute_notebook(
        job.notebook,
        str(out),
        parameters=redact(job.parameters) or None,
        prepare_only=True,
        kernel_name=job.options.kernel,
        language=job.language,
        report_mode=job.options.report_mode,
        progress_bar=False,
    )
    return out


def execute(
    job: Job,
    *,
    retries: int = KERNEL_START_RETRIES,
    store: Any = None,
    recover: bool = False,
    rebuild_index: bool = False,
    on_run: Callable[[str], None] | None = None,
) -> JobResult:
    """Run one prepared job to its end and return what happened (never raises for a
    notebook's failure). A KeyboardInterrupt (Ctrl-C, or ``signals.Terminated`` for
    SIGTERM/SIGHUP under ``signals.handled``) ends the run KILLED with the reason, then
    propagates carrying the result as its ``result``.

    The run is created (by ``store``, a ``run.agent`` store; in-process by default)
    while the kernel starts, and handed to the kernel before its first cell. When the run
    cannot be created the kernel is shut down, no file is left behind and the store's error
    propagates. ``recover`` sweeps runs of dead runners first; ``rebuild_index`` rewrites the
    report index after the run ended; ``on_run`` is called with the run id when the first
    cell is about to run.
    """
    import nbformat

    from workbench.run import agent as run_store

    side = store if store is not None else run_store.LocalRunStore()
    settings = get_settings()
    out = _reserve_report(job, settings)
    html = out.with_suffix(".html")
    begun = side.begin(job, _run_tags(job, settings, out, html), _run_name(job), recover)
    handoff = _handoff(job, begun, settings, on_run)
    result = JobResult(job, "FAILED", report=str(out))
    t0 = time.perf_counter()
    interrupted: BaseException | None = None
    try:
        nb = nbformat.read(job.notebook, as_version=4)
        _insert_header(nb, job)
        env = kernel_env(job, settings)
        interrupted = _attempts(nb, job, env, out, handoff, begun, result, retries)
    except KeyboardInterrupt as exc:  # before papermill took over: KILLED, not FAILED
        result.status, result.reason = "KILLED", getattr(exc, "reason", "interrupted (Ctrl-C)")
        interrupted = exc
    finally:
        result.duration = time.perf_counter() - t0
        b = _begun_or_clean_up(begun, out)
        result.run_id, job.experiment_id = b.run_id, b.experiment_id
        for run_id in b.recovered:
            print(f"marked run {run_id} KILLED: its runner process is gone", file=sys.stderr)
        for note in b.notes:
            print(note, file=sys.stderr)
        _finish(side, job, result, out, html, rebuild_index, interrupted is not None)
    if interrupted is not None:
        interrupted.result = result  # type: ignore[attr-defined]
        raise interrupted
    return result


def _run_name(job: Job) -> str:
    return f"{Path(job.notebook).stem}-{job.label}"


def _reserve_report(job: Job, settings: Settings) -> Path:
    """A fresh report path: ``<reports>/<experiment>/<stamp>-<stem>-<label>.ipynb``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return _reserve(settings.reports_dir / safe_name(job.experiment), f"{stamp}-{_run_name(job)}")


def _run_tags(job: Job, settings: Settings, out: Path, html: Path) -> dict[str, str]:
    """The run's tags: source notebook, runner identity, parameters and report paths."""
    tags = {
        "mlflow.source.name": project_relative(Path(job.notebook), settings),
        "mlflow.source.type": "NOTEBOOK",
        "mlflow.runName": _run_name(job),
        TAG_RUNNER: "papermill",
        TAG_LABEL: job.label,
        TAG_HASH: job.param_hash,
        TAG_EXPERIMENT: job.experiment,
        TAG_PARAMS: json.dumps(redact(job.parameters), default=repr)[:5000],
        TAG_REPORT: project_relative(out, settings),
        TAG_REPORT_HTML: project_relative(html, settings),
        **recovery.runner_tags(),
    }
    if job.metric:
        tags[TAG_METRIC] = job.metric
    return tags


def _handoff(
    job: Job, begun: Future, settings: Settings, on_run: Callable[[str], None] | None
) -> Callable[[], Any]:
    """What the engine calls once the kernel is ready: wait for the run, return its variables
    and the header naming it (``on_run`` is told the first cell is about to run)."""
    from workbench.run import engine as notebook_exec

    def handoff() -> notebook_exec.Handoff:
        b = begun.result()  # raises when the run could not be created
        url = run_url(b.experiment_id, b.run_id, settings)
        header = header_text(job, b.run_id, url, "RUNNING", None)
        if on_run is not None:
            on_run(b.run_id)
        return notebook_exec.Handoff(run_env(b.run_id, b.experiment_id), header, HEADER_KEY)

    return handoff


def _insert_header(nb: Any, job: Job) -> None:
    """Put the report's header cell (status STARTING until the run exists) on top."""
    import nbformat

    header = nbformat.v4.new_markdown_cell(header_text(job, None, None, "STARTING", None))
    header.metadata[HEADER_KEY] = True
    nb.cells.insert(0, header)


def _attempts(
    nb: Any,
    job: Job,
    env: dict[str, str],
    out: Path,
    handoff: Callable[[], Any],
    begun: Future,
    result: JobResult,
    retries: int,
) -> BaseException | None:
    """Execute with papermill into ``result``, retrying only a kernel that never started.

    Returns the KeyboardInterrupt to raise once the run is ended when a signal (or Ctrl-C)
    stopped the execution.
    """
    from workbench.run import engine as notebook_exec

    for attempt in range(1, retries + 2):
        result.attempts = attempt
        state = {"started": False}
        status, reason = notebook_exec.run_papermill(
            nb, out, job.parameters, env, job.timeout, state,
            cwd=job.options.cwd or str(Path(job.notebook).parent),
            kernel_log=out.with_suffix(".kernel.log"),
            handoff=handoff, on_launch=notebook_exec.warm_exporter,
            options=job.options, language=job.language,
        )  # fmt: skip
        result.status, result.reason = status, reason
        result.kernel_started = state["started"]
        if state.get("interrupted"):
            return state["interrupted"]
        if state.get("handoff_failed") or (begun.done() and begun.exception()):
            break  # no run to hand over: retrying the kernel would not help
        if status == "FINISHED" or state["started"] or attempt > retries:
            break
        time.sleep(attempt)  # the kernel never started (papermill#511 port race): retry
    return None


def _begun_or_clean_up(begun: Future, out: Path) -> Any:
    """The created run; when there is none, remove the report files and re-raise the store's
    error (no run: leave nothing behind)."""
    try:
        return begun.result()
    except BaseException:
        for path in (out, out.with_suffix(".html"), out.with_suffix(".kernel.log")):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty
            out.parent.rmdir()
        raise


def _finish(
    side, job: Job, result: JobResult, out: Path, html: Path, rebuild: bool, stopped: bool
) -> None:
    """Write the header and HTML twin, then have the store log both and set the final
    status (the kernel is gone, so MLflow's exit hook in it cannot overrule us).

    A report problem never leaves the run RUNNING: it joins the run's reason and stderr.
    The kernel's own log is kept only when it may explain a failure (not when the run
    finished, nor when a signal ``stopped`` it: its log then only tells of the shutdown).
    """
    from workbench.run import agent as run_store

    run_id = result.run_id
    hidden = secret_values(job.parameters)
    result.reason = scrub(result.reason, hidden)  # a cell's error may quote a secret value
    problem = _write_report(job, result, out, html)
    if problem:
        problem = scrub(problem, hidden)
        result.reason = _joined(result.reason, problem)
        print(f"workbench: run {run_id}: {problem}", file=sys.stderr)
    log = out.with_suffix(".kernel.log")
    if result.status == "FINISHED" or stopped or (log.exists() and not _meaningful(log)):
        log.unlink(missing_ok=True)
    elif log.exists():
        result.reason += f" (kernel log: {project_relative(log)})"
    ending = run_store.Ending(
        run_id, result.status, result.reason, result.duration, [str(out), str(html)], rebuild
    )
    ended = side.end(ending)
    result.reason, result.metrics = ended.reason, ended.metrics
    for note in ended.notes:
        print(note, file=sys.stderr)


def _write_report(job: Job, result: JobResult, out: Path, html: Path) -> str | None:
    """Put the final header on the executed notebook and write the HTML twin; the problem
    when the notebook could not be read or the report not written."""
    from workbench.run import engine as notebook_exec

    url = run_url(job.experiment_id, result.run_id)
    try:
        text = header_text(job, result.run_id, url, result.status, result.duration)
        if result.reason:
            text += f"  \n**why:** {result.reason}"
        problem = notebook_exec.finalize_report(
            out, html, text, HEADER_KEY, job.options.report_mode
        )
    except Exception as exc:
        return f"report not written: {type(exc).__name__}: {exc}"
    return f"report incomplete: {problem}" if problem else None


def _joined(reason: str, more: str) -> str:
    return f"{reason}; {more}" if reason else more


def _meaningful(log: Path) -> bool:
    """True when a kernel log says more than the usual start-up and shutdown chatter."""
    noise = ("running over TCP without encryption", "KeyboardInterrupt caught in kernel")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return any(not any(n in ln for n in noise) for ln in lines)
