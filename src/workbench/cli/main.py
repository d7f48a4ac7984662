"""The ``workbench`` command: thin argument parsing over the package's modules.

Exit codes: 0 success, 1 a notebook or job failed, 2 bad usage or bad parameters (nothing ran).
Each subcommand imports its module only when it runs, so ``workbench --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from workbench.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def _cmd_doctor(a: argparse.Namespace) -> int:
    from workbench.cli import doctor

    return doctor.main()


def _cmd_run(a: argparse.Namespace) -> int:
    from workbench.run import commands
    from workbench.run.jobs import RunOptions

    options = RunOptions(a.kernel, a.cwd, a.start_timeout, a.report_mode, a.log_output)
    return commands.run_command(
        a.notebook,
        parameters=a.param,
        params_files=a.params_file,
        experiment=a.experiment,
        timeout=a.timeout,
        label=a.label,
        parameters_yaml=a.parameters_yaml,
        parameters_raw=a.parameters_raw,
        options=options,
        prepare_only=a.prepare_only,
    )


def _cmd_batch(a: argparse.Namespace) -> int:
    from workbench.run import commands

    return commands.batch_command(
        a.paths,
        jobs=a.jobs,
        resume=a.resume,
        dry_run=a.dry_run,
        timeout=a.timeout,
        cluster=a.cluster,
    )


def _cmd_report(a: argparse.Namespace) -> int:
    from workbench.run import reports

    path = reports.build_index()
    print(f"report index: {path}")
    return EXIT_OK


def _cmd_ui(a: argparse.Namespace) -> int:
    from workbench import server

    return server.ui(host=a.host, port=a.port)


def _cmd_lab(a: argparse.Namespace) -> int:
    from workbench.server import lab

    return lab.main(port=a.port, ui_port=a.ui_port, host=a.host)


def _cmd_serve(a: argparse.Namespace) -> int:
    from workbench import serve as serving

    return serving.serve(
        a.model_uri,
        host=a.host,
        port=a.port,
        refresh_interval=a.refresh_interval,
        trust_model=a.trust_model,
        max_body_mb=a.max_body_mb,
        max_rows=a.max_rows,
    )


def _cmd_server(a: argparse.Namespace) -> int:
    from workbench import server

    if a.action == "start":
        return server.start(
            backend_store_uri=a.backend_store_uri,
            artifacts_destination=a.artifacts_destination,
            host=a.host,
            port=a.port,
            auth=a.auth,
        )
    if a.action == "stop":
        return server.stop()
    return server.status()


def _cmd_search_worker(a: argparse.Namespace) -> int:
    from workbench import search

    return search.worker_command(
        study=a.study, storage=a.storage, n_trials=a.trials, timeout=a.timeout
    )


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "doctor", help="check Python, packages, kernel, store and git; say what to fix"
    )
    s.set_defaults(func=_cmd_doctor)


def _add_timeout(s: argparse.ArgumentParser) -> None:
    """``--timeout S``: the seconds a cell may run (``run`` and ``batch`` share it)."""
    s.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="seconds a cell may run"
    )


def _add_run(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("run", help="execute one notebook headlessly as one MLflow run")
    s.add_argument("notebook")
    s.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (repeatable)",
    )
    s.add_argument(
        "-f",
        "--params-file",
        action="append",
        default=[],
        metavar="PARAMS.yaml",
        help="YAML mapping of parameters (repeatable)",
    )
    s.add_argument(
        "--experiment", help="experiment name (default: the notebook's experiment_name parameter)"
    )
    _add_timeout(s)
    s.add_argument(
        "--label", default=None, help="label for the report file name (default: derived)"
    )
    _add_papermill_options(s)
    s.set_defaults(func=_cmd_run)


def _add_papermill_options(s: argparse.ArgumentParser) -> None:
    """The options people who run papermill use every day, with papermill's meanings."""
    s.add_argument(
        "-y",
        "--parameters-yaml",
        action="append",
        default=[],
        metavar="YAML",
        help="YAML mapping of parameters, e.g. '{lr: 0.1, depth: 3}' (repeatable)",
    )
    s.add_argument(
        "-r",
        "--parameters-raw",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter to VALUE as text, unconverted (repeatable)",
    )
    s.add_argument(
        "-k",
        "--kernel",
        default=None,
        metavar="NAME",
        help="kernel to run it with (default: the notebook's kernelspec, else python3)",
    )
    s.add_argument(
        "--cwd",
        default=None,
        metavar="DIR",
        help="the kernel's working directory (default: the notebook's folder)",
    )
    s.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the kernel may take to start (default 60)",
    )
    s.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the notebook with its parameters injected; run nothing, create no run",
    )
    s.add_argument("--log-output", action="store_true", help="stream cell output to this terminal")
    s.add_argument("--report-mode", action="store_true", help="hide input cells in the report")


def _add_batch(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("batch", help="run batch files (notebook + parameter grid) in parallel")
    s.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    s.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="kernels in parallel")
    s.add_argument(
        "--resume", action="store_true", help="skip parameter sets that already FINISHED"
    )
    s.add_argument("--dry-run", action="store_true", help="list the expanded jobs, run nothing")
    s.add_argument(
        "--cluster",
        metavar="tcp://HOST:8786",
        help="run the jobs on this Dask scheduler's workers (default: $WORKBENCH_CLUSTER or "
        "`cluster` in [tool.workbench]; `local` runs here); needs a tracking server",
    )
    _add_timeout(s)
    s.set_defaults(func=_cmd_batch)


def _add_report(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("report", help="(re)build runs_reports/index.html and index.md")
    s.set_defaults(func=_cmd_report)


def _add_ui(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("ui", help="MLflow UI on the configured store, bound to 127.0.0.1")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=_cmd_ui)


def _add_lab(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("lab", help="JupyterLab and the MLflow UI together, both on 127.0.0.1")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8888)
    s.add_argument("--ui-port", type=int, default=5000)
    s.set_defaults(func=_cmd_lab)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="REST scoring of a logged or registered model")
    s.add_argument("model_uri", metavar="MODEL_URI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument(
        "--refresh-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="how often an alias is re-resolved",
    )
    s.add_argument(
        "--trust-model",
        action="store_true",
        help="load a model the safe loader refuses (a pickle, a pyfunc PythonModel): it can run "
        "any code it brings; only for models whose source you trust (logged)",
    )
    s.add_argument(
        "--max-body-mb",
        type=float,
        default=16.0,
        metavar="MB",
        help="largest request body accepted; larger ones get 413 (default 16)",
    )
    s.add_argument(
        "--max-rows",
        type=int,
        default=100_000,
        metavar="N",
        help="most rows one request may score; more get 413 (default 100000)",
    )
    s.set_defaults(func=_cmd_serve)


def _add_server(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("server", help="team mode: an mlflow server on PostgreSQL")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.add_argument("--backend-store-uri", metavar="URI")
    s.add_argument("--artifacts-destination", metavar="PATH")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument(
        "--auth",
        action="store_true",
        help="enable MLflow's basic-auth app (password from $MLFLOW_AUTH_ADMIN_PASSWORD or a prompt)",
    )
    s.set_defaults(func=_cmd_server)


def _add_search_worker(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("search-worker", help="join an Optuna study as one more worker")
    s.add_argument("--study", required=True)
    s.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="journal:PATH or an RDB URL (default: $WORKBENCH_SEARCH_STORAGE, which keeps a "
        "password out of the process list)",
    )
    s.add_argument("--trials", type=int, default=None, metavar="N")
    s.add_argument("--timeout", type=float, default=None, metavar="S")
    s.set_defaults(func=_cmd_search_worker)


# In the order ``workbench --help`` lists the commands.
_SUBCOMMANDS = (
    _add_doctor,
    _add_run,
    _add_batch,
    _add_report,
    _add_ui,
    _add_lab,
    _add_serve,
    _add_server,
    _add_search_worker,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser: one subparser per command, each dispatching to its ``_cmd_*``."""
    p = argparse.ArgumentParser(
        prog="workbench",
        description="Jupyter-first experimentation workbench on MLflow.",
        epilog="Exit codes: 0 success, 1 a notebook or job failed, 2 bad usage or parameters.",
    )
    from workbench import __version__

    p.add_argument("--version", action="version", version=f"workbench {__version__}")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show MLflow's and alembic's log lines here (always in runs_reports/workbench.log)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return p


def _quiet_libraries(verbose: bool) -> None:
    """Libraries' log lines go to a file next to the reports, not between our lines."""
    from workbench.core import logs
    from workbench.core.config import get_settings

    logs.route_library_logs(get_settings().reports_dir / logs.LOG_FILE_NAME, verbose=verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _quiet_libraries(args.verbose)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"workbench {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not type(exc).__module__.startswith("workbench."):
            raise  # a bug: the traceback is what helps
        # The workbench's own errors (store, server, data, search...) say what is wrong and
        # how to fix it: a message, not a traceback.
        print(f"workbench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if type(exc).__name__ == "UsageProblem" else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
