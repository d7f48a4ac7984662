"""The worker side of a search: join a study another process created (everything needed is
in its user attributes and storage), start and collect worker processes on this machine,
and ``workbench search-worker``, the command a worker runs.

Kept apart from ``search`` (which creates studies and runs them in one process): this is
what runs in the other processes.

The storage URL may hold a database password, and command lines are visible to every user
of the machine (``ps``): workers started here get it through ``$WORKBENCH_SEARCH_STORAGE``,
never as an argument. ``workbench search-worker --storage URL`` still takes it from a user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from workbench.search.spaces import SearchSpaceError
from workbench.search.storage import (
    STORAGE_ENV,
    SearchError,
    open_storage,
    redact_url,
    storage_kind,
)
from workbench.search.study import SearchStudy, Settings, bind_study, load_split, make_pruner
from workbench.search.trials import SETTINGS_ATTR, WORKER_ATTR


def join_study(study_name: str, storage: str) -> SearchStudy:
    """Attach to an existing study (another process created it) to run more trials."""
    import mlflow
    import optuna

    if storage_kind(storage) == "memory":
        raise SearchError(
            "an in-memory study cannot be joined: create it with storage='journal:PATH' or an RDB URL"
        )
    backend = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError as exc:
        names = optuna.get_all_study_names(backend)
        raise SearchError(
            f"no study {study_name!r} in {redact_url(storage)}; studies there: {', '.join(names) or 'none'}"
        ) from exc
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if not raw:
        raise SearchError(
            f"study {study_name!r} was not created by workbench.search (no {SETTINGS_ATTR!r} user attribute)"
        )
    settings = Settings(**raw)
    # Samplers and pruners live in the process, not the storage: rebuild them. Each worker's
    # sampler is seeded differently (by the OS), or all would propose the same points.
    study.sampler = optuna.samplers.TPESampler()
    study.pruner = make_pruner(settings.pruner, settings.model_family)
    mlflow.set_tracking_uri(settings.tracking_uri)
    ds, split = load_split(settings)
    return bind_study(study, settings, storage, ds, split)


def start_workers(
    study_name: str,
    storage: str,
    n: int,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    log_dir: str | Path | None = None,
    cluster: str | None = None,
) -> list[subprocess.Popen]:
    """Start ``n`` ``workbench search-worker`` processes on this machine (or, with
    ``cluster="tcp://HOST:8786"``, as tasks on a Dask cluster); ``wait_workers`` collects
    them. Local workers' output goes to ``log_dir/worker-<i>.log`` (default: discarded)."""
    if storage_kind(storage) == "memory":
        raise SearchError("workers need a shared storage: use storage='journal:PATH' or an RDB URL")
    if cluster:
        from workbench.search.cluster_workers import start_cluster_workers

        return start_cluster_workers(  # type: ignore[return-value]
            study_name, storage, n, cluster=cluster, n_trials=n_trials, timeout=timeout,
            storage_env=STORAGE_ENV,
        )  # fmt: skip
    # No --storage: the URL is in the environment ($WORKBENCH_SEARCH_STORAGE), out of ps.
    cmd = [sys.executable, "-m", "workbench.cli", "search-worker", "--study", study_name]
    cmd += ["--trials", str(n_trials)] if n_trials else []
    cmd += ["--timeout", str(timeout)] if timeout else []
    procs = []
    for i in range(n):
        out = open(Path(log_dir) / f"worker-{i}.log", "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", STORAGE_ENV: storage},
            )
        )
    return procs


def wait_workers(procs: list[subprocess.Popen], timeout: float | None = None) -> list[int]:
    """Wait for worker processes; kill any still running after ``timeout`` s. Exit codes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(
                p.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
            )
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def worker_command(
    *, study: str, storage: str | None, n_trials: int | None, timeout: float | None
) -> int:
    """``workbench search-worker``: join ``study`` and run trials until ``n_trials`` (this
    worker), ``timeout`` seconds, or the study's planned total. Exit 0 when it ran (or had
    nothing left to run), 1 when every trial it ran failed, 2 when the study cannot be joined.

    Without ``storage`` (None or empty) the URL is read from ``$WORKBENCH_SEARCH_STORAGE``."""
    import optuna

    from workbench.core.errors import UsageError
    from workbench.tracking.data import DataError

    storage = storage or os.environ.get(STORAGE_ENV, "")
    if not storage:
        raise UsageError(
            f"no study storage: pass --storage URL or set ${STORAGE_ENV} "
            "(journal:PATH or an RDB URL such as postgresql+psycopg://user@host/db)"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        s = join_study(study, storage)
    except (SearchError, SearchSpaceError, DataError) as exc:
        raise UsageError(str(exc)) from exc
    if n_trials is None and timeout is None and not s.settings.n_trials:
        raise UsageError(
            f"study {study!r} has no planned number of trials: pass --trials N or --timeout S"
        )
    before = {t.number for t in s.study.get_trials(deepcopy=False)}
    if n_trials is None and s.settings.n_trials and len(before) >= s.settings.n_trials:
        print(
            f"study {study!r} already has its {s.settings.n_trials} planned trials: nothing to do"
        )
        return 0
    s.optimize(n_trials=n_trials, timeout=timeout)
    mine = [
        t
        for t in s.study.get_trials(deepcopy=False)
        if t.number not in before
        and t.user_attrs.get(WORKER_ATTR, "").startswith(f"{socket.gethostname()}:{os.getpid()}:")
    ]
    failed = sum(t.state.name == "FAIL" for t in mine)
    print(
        f"worker {os.getpid()}: {len(mine)} trials in study {study!r} ({failed} failed); study now {s.counts()}"
    )
    return 1 if mine and failed == len(mine) else 0
