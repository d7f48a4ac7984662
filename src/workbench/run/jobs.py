"""One notebook execution, described and validated before anything runs.

``prepare_job`` reads the notebook's ``parameters`` cell, merges parameter files, typed
values and command-line strings, checks them (``workbench.notebook_params``), picks the
experiment and the label, and hashes the parameter set (what ``batch --resume`` compares).
How the notebook executes (``RunOptions``: kernel, working directory, start timeout, report
mode, output streaming; papermill's options) is checked too, the kernel resolved to an
installed one. It starts no kernel and touches no store: a bad parameter or a kernel that is
not installed costs nothing but a message.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.core.config import Settings, get_settings
from workbench.core.errors import UsageError
from workbench.core.secrets import redact, scrub, secret_values
from workbench.run import params as nbp

DEFAULT_KERNEL = "python3"  # for a notebook saved without a kernelspec (VS Code writes those)


@dataclass(frozen=True)
class RunOptions:
    """How a notebook executes, with papermill's meanings (``workbench run`` options, batch keys)."""

    kernel: str | None = None  # -k: default the notebook's kernelspec, else python3
    cwd: str | None = None  # --cwd: the kernel's working directory (default: the notebook's)
    start_timeout: float = 60.0  # --start-timeout: seconds the kernel may take to start
    report_mode: bool = False  # --report-mode: input cells hidden in the report
    log_output: bool = False  # --log-output: cell output streamed to the terminal


@dataclass
class Job:
    """One notebook execution, validated and ready to run (picklable for worker processes)."""

    notebook: str  # absolute path
    parameters: dict[str, Any]
    experiment: str
    label: str
    param_hash: str
    timeout: float | None = None
    params_files: tuple[str, ...] = ()
    experiment_id: str | None = None
    metric: str | None = None  # the batch's key metric, if it names one
    options: RunOptions = field(default_factory=RunOptions)  # its kernel resolved
    language: str = "python"  # the kernel's language (parameter syntax, run hand-over)


@dataclass
class JobResult:
    job: Job
    status: str  # FINISHED, FAILED, KILLED (or SKIPPED by --resume)
    duration: float = 0.0
    run_id: str | None = None
    report: str | None = None  # the executed .ipynb; the .html lies beside it
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    kernel_started: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("FINISHED", "SKIPPED")


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a label or experiment name."""
    return re.sub(r"[^\w.=+-]+", "_", str(text)).strip("_.")[:limit] or "x"


def project_relative(path: Path, settings: Settings | None = None) -> str:
    """``path`` relative to the project folder when inside it (stable across machines)."""
    project = (settings or get_settings()).project_dir
    try:
        return str(path.resolve().relative_to(project))
    except ValueError:
        return str(path.resolve())


def load_params_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of parameters, as papermill takes it."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"parameters file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{p} must hold a mapping of parameter names to values")
    return data


def param_hash(notebook: str, parameters: dict[str, Any]) -> str:
    """Identity of one parameter set of one notebook (what --resume compares)."""
    blob = json.dumps(
        {"notebook": notebook, "parameters": parameters}, sort_keys=True, default=repr
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def derive_label(overrides: dict[str, Any], files: list[str] | tuple[str, ...] = ()) -> str:
    """A short name for one parameter set (run names, report file names): the values that
    differ from the defaults, secrets masked; else the parameter files' stems."""
    shown = {k: v for k, v in redact(overrides).items() if k != "experiment_name"}
    if shown:
        return safe_name("-".join(f"{k}={v}" for k, v in shown.items()))
    if files:
        return safe_name("+".join(Path(f).stem for f in files))
    return "default"


def prepare_job(
    notebook: str | Path,
    *,
    texts: list[tuple[str, str]] | None = None,
    values: dict[str, Any] | None = None,
    params_files: list[str] | tuple[str, ...] = (),
    experiment: str | None = None,
    timeout: float | None = None,
    label: str | None = None,
    label_values: dict[str, Any] | None = None,
    metric: str | None = None,
    options: RunOptions | None = None,
) -> Job:
    """Validate everything about one execution without starting a kernel or touching the
    store; raises UsageError naming the problem."""
    path = Path(notebook).expanduser()
    if not path.is_file():
        raise UsageError(f"notebook not found: {path}")
    if path.suffix != ".ipynb":
        raise UsageError(f"{path} is not a notebook (.ipynb)")
    try:
        specs = nbp.inspect(path)
    except Exception as exc:  # nbformat validation, JSON errors
        raise UsageError(f"cannot read {path}: {exc}") from exc
    merged: dict[str, Any] = {}
    for f in params_files:
        merged.update(load_params_file(f))
    merged.update(values or {})
    try:
        params = nbp.resolve(path, specs, texts=list(texts or []), values=merged)
    except nbp.ParameterError as exc:
        raise UsageError(str(exc)) from exc
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive seconds, got {timeout}")
    options, language = check_options(path, options or RunOptions())
    if not experiment:
        experiment = params.get("experiment_name")
        if not experiment and "experiment_name" in specs:
            experiment = nbp.default_value(specs["experiment_name"])
        experiment = str(experiment) if experiment else path.stem
    if "experiment_name" in specs:
        params["experiment_name"] = experiment
    if label is None:
        label = derive_label(label_values if label_values is not None else params, params_files)
    rel = project_relative(path)
    return Job(
        notebook=str(path.resolve()),
        parameters=params,
        experiment=experiment,
        label=safe_name(scrub(label, secret_values(params))),
        param_hash=param_hash(rel, params),
        timeout=timeout,
        params_files=tuple(str(Path(f).resolve()) for f in params_files),
        metric=metric,
        options=options,
        language=language,
    )


def check_options(path: Path, options: RunOptions) -> tuple[RunOptions, str]:
    """``options`` checked, with the kernel resolved and ``cwd`` made absolute; and the
    kernel's language. Raises UsageError naming the fix."""
    if options.start_timeout <= 0:
        raise UsageError(f"--start-timeout must be positive seconds, got {options.start_timeout}")
    cwd = options.cwd
    if cwd is not None:
        folder = Path(cwd).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--cwd: no such directory: {folder}")
        cwd = str(folder.resolve())
    kernel, language = resolve_kernel(path, options.kernel)
    return replace(options, kernel=kernel, cwd=cwd), language


def resolve_kernel(path: Path, requested: str | None) -> tuple[str, str]:
    """(kernel name, language) for ``path``: ``requested`` (``-k``), else the notebook's
    kernelspec, else ``python3``, this environment's Python (papermill refuses a notebook
    without kernelspec). A kernel that is not installed is bad usage: no kernel could start,
    so nothing would run."""
    if requested is None:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata") or {}
        requested = (meta.get("kernelspec") or {}).get("name") or DEFAULT_KERNEL
    specs = _kernel_specs()
    if requested not in specs:
        raise UsageError(
            f"kernel {requested!r} is not installed, so {path.name} cannot run "
            f"(installed: {', '.join(sorted(specs)) or 'none'}); pick one with -k/--kernel "
            "(batch files: kernel:), or install that kernel (`jupyter kernelspec list`)"
        )
    return requested, (specs[requested] or "python").lower()


_specs: dict[str, str] | None = None


def _kernel_specs() -> dict[str, str]:
    """Installed kernel names and their languages (read once per process)."""
    global _specs
    if _specs is None:
        from jupyter_client.kernelspec import KernelSpecManager

        found = KernelSpecManager().get_all_specs()
        _specs = {name: (d.get("spec") or {}).get("language", "") for name, d in found.items()}
    return _specs
