"""Runs a dead runner left RUNNING: found through their runner tags and marked KILLED.

Every run the runner creates carries the runner's host, pid and start tick
(``runner_tags``). A later command on the same host sweeps the store: a RUNNING run whose
runner process is gone (or whose pid now belongs to another process) is marked KILLED with
the reason. Runs of another host are left alone: only that host can tell.
"""

from __future__ import annotations

import os
import socket

from workbench.core import processes, store
from workbench.core.names import TAG_HOST, TAG_PID, TAG_PSTART, TAG_REASON


def runner_tags() -> dict[str, str]:
    """The tags that let a later sweep tell whether this process still runs."""
    pid = os.getpid()
    return {
        TAG_PID: str(pid),
        TAG_HOST: socket.gethostname(),
        TAG_PSTART: processes.start_ticks(pid),
    }


def recover_stale_runs(client=None) -> list[str]:
    """Mark KILLED the RUNNING runs whose runner process on this host is gone; their ids."""
    client = client or store.connect(activate=False)
    host = socket.gethostname().replace("'", "")
    exp_ids = [e.experiment_id for e in store.iter_experiments(client)]
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    killed = []
    # Read every page before changing any run: marking runs KILLED while paging through a
    # RUNNING-only query would shift the later pages and skip runs.
    for run in list(store.iter_runs(client, exp_ids, query)):
        tags = run.data.tags
        try:
            pid = int(tags.get(TAG_PID, ""))
        except ValueError:
            continue
        if processes.alive(pid, tags.get(TAG_PSTART, "")):
            continue
        client.set_tag(run.info.run_id, TAG_REASON, f"runner process {pid} on {host} died")
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_id)
    return killed
