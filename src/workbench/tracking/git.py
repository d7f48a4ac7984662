"""The git state a run is tagged with: commit, branch and whether the checkout is dirty."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from workbench.core.config import get_settings


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool | None


def git_state(path: Path | None = None) -> GitState:
    """Commit, branch and dirty flag of the repository holding ``path`` (None outside git).

    One ``git status --porcelain=v2 --branch`` answers all three (a process start costs a
    few milliseconds; three of them were a tenth of ``start_run``).
    """
    cwd = str(path or get_settings().project_dir)
    out = _git(cwd, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if out is None:
        return GitState(None, None, None)
    header = dict(line[2:].split(" ", 1) for line in out.splitlines() if line.startswith("# "))
    commit = header.get("branch.oid")
    if commit is None:  # a git without porcelain v2 headers
        return _git_state_by_parts(cwd)
    if commit == "(initial)":  # no commit yet
        return GitState(None, None, None)
    branch = header.get("branch.head", "")
    return GitState(
        commit,
        "HEAD" if branch == "(detached)" else branch,  # what rev-parse --abbrev-ref says
        any(not line.startswith("#") for line in out.splitlines()),
    )


def _git(cwd: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_state_by_parts(cwd: str) -> GitState:
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None, None)
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return GitState(
        commit,
        _git(cwd, "rev-parse", "--abbrev-ref", "HEAD"),
        bool(status) if status is not None else None,
    )
