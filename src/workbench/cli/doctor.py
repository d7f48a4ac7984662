"""`workbench doctor`: check what the workbench needs and say how to fix what is missing."""

from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
from dataclasses import dataclass

from workbench.core.config import get_settings

PACKAGES = (
    "mlflow",
    "optuna",
    "papermill",
    "nbclient",
    "ipykernel",
    "ipywidgets",
    "jupyterlab",
    "scikit-learn",
    "skops",
    "xgboost",
    "pandas",
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check(
        "python",
        ok,
        f"{v.major}.{v.minor}.{v.micro} at {sys.executable}",
        "" if ok else "install Python 3.11 or newer, then `make demo`",
    )


def check_packages() -> list[Check]:
    checks = []
    for name in PACKAGES:
        try:
            checks.append(Check(name, True, md.version(name)))
        except md.PackageNotFoundError:
            checks.append(
                Check(
                    name,
                    False,
                    "not installed",
                    "run `make demo` (or `pip install -e .`) in the project folder",
                )
            )
    return checks


def check_kernel() -> Check:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
    except Exception as exc:
        return Check(
            "jupyter kernel", False, f"cannot list kernels: {exc}", "pip install ipykernel"
        )
    if "python3" in specs:
        return Check("jupyter kernel", True, f"python3 at {specs['python3']}")
    return Check(
        "jupyter kernel",
        False,
        "no python3 kernel",
        f"{sys.executable} -m ipykernel install --sys-prefix",
    )


def check_store() -> Check:
    from workbench.core import store

    settings = get_settings()
    detail = f"{settings.tracking_uri} (from {settings.source})"
    try:
        client = store.connect(settings, activate=False)
        n = sum(1 for _ in store.iter_experiments(client))
    except Exception as exc:
        return Check(
            "tracking store",
            False,
            f"{detail}: {str(exc).splitlines()[0]}",
            "check MLFLOW_TRACKING_URI, or unset it to use the embedded store",
        )
    return Check(
        "tracking store",
        True,
        f"{detail}, {n} experiment(s), artifacts in {settings.artifact_root or 'the server'}",
    )


def check_git() -> Check:
    if shutil.which("git") is None:
        return Check(
            "git", False, "git not found", "install git so runs record the commit they came from"
        )
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=get_settings().project_dir,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return Check("git", True, "not a git repository: runs will carry no commit tag", "")
    return Check("git", True, f"commit {out.stdout.strip()}")


def run_checks() -> list[Check]:
    return [check_python(), *check_packages(), check_kernel(), check_store(), check_git()]


def main() -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok ' if c.ok else 'BAD'}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"{'':>5}{'':<{width}}  fix: {c.fix}")
    bad = [c for c in checks if not c.ok]
    print("all good" if not bad else f"{len(bad)} problem(s) found")
    return 0 if not bad else 1
