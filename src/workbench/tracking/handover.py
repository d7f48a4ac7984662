"""Plain MLflow in a runner's kernel logs into the runner's run (this runs inside the kernel).

``workbench run`` creates one MLflow run per notebook execution and hands it to the kernel
the way MLflow Projects hand a run to code: its id in ``$MLFLOW_RUN_ID`` (and its experiment
in ``$MLFLOW_EXPERIMENT_ID``). MLflow itself resumes ``$MLFLOW_RUN_ID`` on the first
``start_run()`` and then forgets it, so a notebook written the usual way::

    with mlflow.start_run():
        mlflow.log_param("lr", 0.1)

would log into the runner's run once, and a second ``start_run()`` (a loop, a later cell)
would make a stray top-level run with no report and no link. ``install`` makes every fluent
run start of the execution follow one rule:

- the first top-level ``start_run()`` (or ``mlflow.log_*`` with no active run, or an
  autologging run) resumes the execution's run; ``start_run(run_id=<that id>)``, which
  ``workbench.tracking.start_run`` calls, counts as that first one too;
- ``start_run(nested=True)`` under an active run makes a child of it, as MLflow does;
- every later top-level ``start_run()`` makes a child of the execution's run (tag
  ``mlflow.parentRunId``, in the execution's experiment), so nothing is orphaned and params
  of a loop don't collide;
- ``workbench.tracking.start_run`` asks ``resumable`` first: once an earlier top-level run
  took the execution's run and ended it (a notebook that logs a run by hand, then with the
  helper), the helper's run is a later top-level run like any other, a child the notebook
  owns and ends (FINISHED, or FAILED when a cell raises), instead of reopening the by-hand
  run and mixing both into one; a plain ``start_run(run_id=<that id>)`` still reopens it;
- every run made here carries the execution's report tags and notebook source, so each one
  links to the report;
- when the notebook chose another experiment (``mlflow.set_experiment`` or an explicit
  ``experiment_id``), the execution's run still is the run: it stays in the experiment
  ``workbench run`` chose, the notebook's later runs follow it there (one execution, one
  place), and one line on stderr says how to pick the experiment (``--experiment``).
  MLflow Projects raise here instead; papermill runs such a notebook fine, so must we.

The runner sets the run's final status after the kernel is gone, so whatever the notebook's
``with`` block or ``end_run()`` did, the runner's verdict stands.

How: the hand-over snippet (``snippet``) runs before the first cell and must not import MLflow
(about 1.5 s, and many notebooks never touch it). ``install`` puts a one-shot finder on
``sys.meta_path``; when the notebook imports ``mlflow``, the module loads as usual and then
``mlflow.start_run`` (public API) is wrapped where MLflow's own code finds it
(``core.mlflow_compat.start_run_homes``). The alternative, an MLflow run-context-provider
plugin, only adds tags to new runs: it cannot turn a second ``start_run()`` into a child with
the right parent, cannot keep the resumed run when the notebook picked another experiment,
and would need an entry point installed with the package. If ``mlflow`` was imported before
the hand-over (a kernel started from a template that pre-imported it), the wrap is immediate.
A kernel without this package still gets MLflow's own ``$MLFLOW_RUN_ID`` behaviour.
Cost in the kernel: importing this module (with ``workbench.tracking``) about 15 ms; one
extra ``get_run`` per execution, on its first child run.
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import sys
from typing import Any

from workbench.core.names import RUN_ID_ENV, TAG_REPORT, TAG_REPORT_HTML

RUN_ID_VAR = "MLFLOW_RUN_ID"  # MLflow's own: the run a program logs into
EXPERIMENT_VAR = "MLFLOW_EXPERIMENT_ID"
# What every run made in the execution copies from the execution's run: the report and source.
LINK_TAGS = (TAG_REPORT, TAG_REPORT_HTML, "mlflow.source.name", "mlflow.source.type")
_MARK = "__workbench_handover__"


def snippet(env: dict[str, str]) -> str:
    """The silent code the runner executes in a Python kernel before the first cell: the run's
    variables into ``os.environ``, then ``install()`` when this package is importable there (a
    kernel of another environment still has MLflow's own ``$MLFLOW_RUN_ID``)."""
    return (
        "import os as _wb_os\n"
        f"_wb_os.environ.update({env!r})\n"
        "del _wb_os\n"
        "try:\n"
        "    from workbench.tracking import handover as _wb_handover\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    _wb_handover.install()\n"
        "    del _wb_handover\n"
    )


class Execution:
    """The run of this notebook execution, and whether a ``start_run`` has taken it yet."""

    def __init__(self, run_id: str, experiment_id: str | None):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.taken = False
        self._links: dict[str, str] | None = None

    def links(self) -> dict[str, str]:
        """The tags linking a run to this execution's report (read once, on first use)."""
        if self._links is None:
            import mlflow

            tags = mlflow.MlflowClient().get_run(self.run_id).data.tags
            self._links = {k: tags[k] for k in LINK_TAGS if k in tags}
        return self._links

    def take(self) -> None:
        """The run is active now: MLflow must not resume it again from the environment."""
        self.taken = True
        os.environ.pop(RUN_ID_VAR, None)


_execution: Execution | None = None


def current() -> Execution | None:
    """The execution installed in this process, if any."""
    return _execution


def resumable(run_id: str) -> bool:
    """Whether ``workbench.tracking.start_run`` should resume ``run_id`` (``$WORKBENCH_RUN_ID``):
    True unless it is this execution's run, an earlier top-level run took it, and it is not
    the active run any more. Then the helper starts a run of its own (a child, by the rule)."""
    ex = _execution
    if ex is None or ex.run_id != run_id or not ex.taken:
        return True
    import mlflow

    active = mlflow.active_run()
    return active is not None and active.info.run_id == run_id


def install(run_id: str | None = None, experiment_id: str | None = None) -> bool:
    """Route this process's fluent ``mlflow.start_run`` through the execution's rule (see the
    module docstring). Imports nothing heavy; False when there is no run to hand over."""
    global _execution
    run_id = run_id or os.environ.get(RUN_ID_VAR) or os.environ.get(RUN_ID_ENV)
    if not run_id:
        return False
    _execution = Execution(run_id, experiment_id or os.environ.get(EXPERIMENT_VAR))
    module = sys.modules.get("mlflow")
    if module is not None and hasattr(module, "start_run"):  # imported before the hand-over
        _wrap(module)
    elif not any(isinstance(f, _MlflowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MlflowFinder())
    return True


# ------------------------------------------------------------------ waiting for `import mlflow`


class _MlflowFinder(importlib.abc.MetaPathFinder):
    """Finds ``mlflow`` through the other finders and hands back its spec with a loader that
    wraps ``start_run`` once the package has loaded; then leaves ``sys.meta_path``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "mlflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _WrappingLoader(spec.loader, self)
        return spec


class _WrappingLoader:
    """The real loader, plus the wrap after ``exec_module``; anything else is the real
    loader's (resources, source), and the module keeps the real loader afterwards."""

    def __init__(self, real, finder: _MlflowFinder):
        self._real = real
        self._finder = finder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._real.exec_module(module)
        finally:
            module.__loader__ = self._real
            if module.__spec__ is not None:
                module.__spec__.loader = self._real
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
        _wrap(module)


# ------------------------------------------------------------------ the rule


def _wrap(mlflow_module) -> None:
    """Replace ``start_run`` wherever MLflow's fluent code finds it (once)."""
    import inspect

    from workbench.core import mlflow_compat

    original = mlflow_module.start_run
    if getattr(original, _MARK, False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def start_run(*args: Any, **kwargs: Any):
        return _start_run(original, signature, args, kwargs)

    setattr(start_run, _MARK, True)
    for home in mlflow_compat.start_run_homes(mlflow_module):
        home.start_run = start_run


def _start_run(original, signature, args: tuple, kwargs: dict):
    """MLflow's ``start_run``, deciding first what the call means in this execution."""
    ex = _execution
    if ex is None:
        return original(*args, **kwargs)
    try:
        call = signature.bind(*args, **kwargs)
    except TypeError:
        return original(*args, **kwargs)  # MLflow's own error for a wrong call
    import mlflow

    given = call.arguments
    if given.get("run_id"):
        if given["run_id"] != ex.run_id:
            return original(*args, **kwargs)
        return _resume(ex, original, call)  # workbench.tracking.start_run does this
    top_level = mlflow.active_run() is None
    if top_level and not given.get("parent_run_id") and not ex.taken:
        return _resume(ex, original, call)
    if not top_level and not given.get("nested"):
        return original(*args, **kwargs)  # MLflow's "a run is already active"
    return _child(ex, original, call, top_level)


def _resume(ex: Execution, original, call):
    """Continue the execution's run (in its own experiment, whatever the notebook chose)."""
    _keep_experiment(ex, call.arguments.get("experiment_id"))
    call.arguments["run_id"] = ex.run_id
    active = original(*call.args, **call.kwargs)
    ex.take()
    return active


def _child(ex: Execution, original, call, top_level: bool):
    """A new run of this execution: a child of the active run, or, at top level, of the
    execution's run; either way linked to the report."""
    given = call.arguments
    if top_level and not given.get("parent_run_id"):
        given["parent_run_id"] = ex.run_id
        if ex.experiment_id is not None:  # beside its parent, whatever the caller named
            given["experiment_id"] = ex.experiment_id
    given["tags"] = {**ex.links(), **(given.get("tags") or {})}
    if ex.taken:
        return original(*call.args, **call.kwargs)
    # Not taken yet (the notebook started another run by id first): MLflow would resume
    # $MLFLOW_RUN_ID here instead of making the child, so it is out of sight for this call.
    saved = os.environ.pop(RUN_ID_VAR, None)
    try:
        return original(*call.args, **call.kwargs)
    finally:
        if saved is not None:
            os.environ[RUN_ID_VAR] = saved


def _keep_experiment(ex: Execution, explicit: str | None) -> None:
    """Point the fluent API at the execution's experiment when the notebook chose another
    (MLflow refuses to resume a run from another experiment), and say so once."""
    wanted = str(explicit) if explicit is not None else os.environ.get(EXPERIMENT_VAR)
    if ex.experiment_id is None or wanted in (None, ex.experiment_id):
        return
    import mlflow

    mlflow.set_experiment(experiment_id=ex.experiment_id)
    ours, theirs = _experiment_name(ex.experiment_id), _experiment_name(wanted)
    print(
        f"workbench: this execution logs into run {ex.run_id} in experiment {ours!r}, the one "
        f"`workbench run` chose, not {theirs!r}; to log there, run it with --experiment "
        f"{theirs!r}.",
        file=sys.stderr,
    )


def _experiment_name(experiment_id: str) -> str:
    import mlflow

    try:
        return mlflow.get_experiment(experiment_id).name
    except Exception:  # a name for a message only
        return experiment_id
