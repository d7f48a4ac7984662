"""Runs a dead runner left RUNNING: found through their runner tags and marked KILLED.

Every run the runner creates carries the runner's host, pid and start tick
(``runner_tags``). A later command on the same host sweeps the store: a RUNNING run whose
runner process is gone (or whose pid now belongs to another process) is marked KILLED with
the reason. Runs of another host are left alone: only that host can tell. So are runs
recorded under another pid namespace or boot (two containers sharing a hostname, or a run
from before a reboot): their pid means nothing here. A run this user may not change (team
mode with auth: another user's run) is skipped with a note, never a reason to fail.
"""

from __future__ import annotations

import os
import socket

from workbench.core import processes, store
from workbench.core.names import TAG_HOST, TAG_PID, TAG_PIDNS, TAG_PSTART, TAG_REASON


def runner_tags() -> dict[str, str]:
    """The tags that let a later sweep tell whether this process still runs."""
    pid = os.getpid()
    return {
        TAG_PID: str(pid),
        TAG_HOST: socket.gethostname(),
        TAG_PSTART: processes.start_ticks(pid),
    }


def recover_stale_runs(client=None, notes: list[str] | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs whose runner process on this host is gone; their ids.
    Runs that could not be changed are said in ``notes`` (when given), never raised."""
    client = client or store.connect(activate=False)
    host = socket.gethostname().replace("'", "")
    here = processes.namespace_id()
    exp_ids = [e.experiment_id for e in store.iter_experiments(client)]
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    killed = []
    # Read every page before changing any run: marking runs KILLED while paging through a
    # RUNNING-only query would shift the later pages and skip runs.
    for run in list(store.iter_runs(client, exp_ids, query)):
        pid = _dead_runner(run.data.tags, here)
        if pid is None:
            continue
        try:
            client.set_tag(run.info.run_id, TAG_REASON, f"runner process {pid} on {host} died")
            client.set_terminated(run.info.run_id, "KILLED")
        except Exception as exc:  # e.g. 403: another user's run on a server with auth
            if notes is not None:
                notes.append(f"note: could not mark run {run.info.run_id} KILLED: {exc}")
            continue
        killed.append(run.info.run_id)
    return killed


def _dead_runner(tags: dict[str, str], here: str) -> int | None:
    """The pid of a run's runner when that runner is certainly gone, else None."""
    try:
        pid = int(tags.get(TAG_PID, ""))
    except ValueError:
        return None
    if tags.get(TAG_PIDNS, here) != here:
        return None  # recorded in another container or before a reboot: cannot tell
    return None if processes.alive(pid, tags.get(TAG_PSTART, "")) else pid
