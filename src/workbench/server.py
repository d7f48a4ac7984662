"""Team mode: a real ``mlflow server`` (PostgreSQL in team use), and ``workbench ui``.

``workbench server start`` runs ``python -m mlflow server`` detached, on the given backend
store, with proxied artifacts (clients upload through the server, so nobody needs access to
the artifact folder or bucket), bound to 127.0.0.1 unless ``--host`` says otherwise, with the
allowed Host headers set, and optionally MLflow's basic-auth app. It waits for ``/health``,
then records what it started (pid, start time, port, store) in
``<project>/.workbench/server.json`` so that ``stop`` stops that process group and nothing
else, and ``status`` can say whether it answers and which store it uses.

Facts that shape it (MLflow 3.17): ``postgresql://`` URLs need psycopg 3 under SQLAlchemy
2.1, so they are rewritten to ``postgresql+psycopg://``; a server on PostgreSQL answered
``/health`` 14-36 s after start here; MLflow ships no default admin password, and the auth
app needs a static Flask secret key.

``ui()`` serves the MLflow UI on the configured store (the embedded SQLite store by default)
in the foreground until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.config import get_settings
from workbench.ports import answers, port_free, wait_http
from workbench.ports import free_port as free_port  # server.free_port: tests, benchmarks

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STATE_DIRNAME = ".workbench"
START_TIMEOUT_S = float(os.environ.get("WORKBENCH_SERVER_START_TIMEOUT", "180"))
STOP_TIMEOUT_S = 30.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
MIN_PASSWORD_LEN = 12  # MLflow's own rule for basic-auth passwords


class ServerError(RuntimeError):
    """The server cannot be started, found or stopped as asked; the message says why."""


class UsageProblem(ServerError):
    """Bad usage (missing store or password, busy port, already running): nothing started."""


# ------------------------------------------------------------------ small pure helpers


def normalize_store_uri(uri: str, base: Path | None = None) -> str:
    """The backend store URI MLflow should get.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3 is what
    is installed; SQLAlchemy 2.1 would look for psycopg2). Relative SQLite paths are made
    absolute against the project. HTTP URIs are refused: that is a server, not a store.
    """
    from workbench.config import resolve_sqlite_uri

    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        raise UsageProblem(
            f"{uri!r} is a tracking server, not a backend store.\n"
            "fix: give the database the server should use, e.g. "
            "--backend-store-uri postgresql://USER@HOST:5432/mlflow"
        )
    for plain in ("postgresql://", "postgres://"):
        if uri.startswith(plain):
            return "postgresql+psycopg://" + uri[len(plain) :]
    return resolve_sqlite_uri(uri, base or get_settings().project_dir)


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for printing and the state file)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


def allowed_hosts(host: str, port: int) -> list[str]:
    """Host headers the server accepts (DNS-rebinding protection).

    Loopback names always; the bind address and this machine's names when bound elsewhere;
    plus ``$WORKBENCH_ALLOWED_HOSTS`` (comma-separated, e.g. the public name a TLS proxy
    forwards). MLflow's own default would also admit every private-network address.
    """
    names = ["localhost", "127.0.0.1", "[::1]"]
    if host not in (*LOOPBACK, "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    if host in ("0.0.0.0", "::"):
        names += [socket.gethostname(), socket.getfqdn()]
    extra = [
        h.strip() for h in os.environ.get("WORKBENCH_ALLOWED_HOSTS", "").split(",") if h.strip()
    ]
    out: list[str] = []
    for name in [*names, *extra]:
        has_port = re.search(r"(^[^:\[]+|\])(:[\d*]+)$", name) is not None
        out += [name] if has_port else [name, f"{name}:{port}"]
    return list(dict.fromkeys(out))


def client_url(host: str, port: int) -> str:
    """The URL clients on this machine use for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def health(url: str, timeout: float = 3.0) -> bool:
    """True when ``url``/health answers 200 (unauthenticated even with basic auth on)."""
    return answers(url.rstrip("/") + "/health", timeout=timeout)


# ------------------------------------------------------------------ process groups


_children: dict[int, subprocess.Popen] = {}


def spawn(
    cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (its own process group), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def stop_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by ``pid``, wait, then SIGKILL what is left.

    The server's uvicorn workers live in that group, so nothing is orphaned.
    """
    import psutil

    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    # Reap it if it is our own child, so no zombie is left behind.
    if (proc := _children.pop(pid, None)) is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------ state


@dataclass
class ServerState:
    """What ``start`` started: enough for ``stop`` to find exactly that process again."""

    pid: int
    create_time: float
    host: str
    port: int
    url: str
    backend_store_uri: str  # password masked
    artifacts_destination: str
    auth: bool
    log: str
    started_at: str

    def is_ours(self) -> bool:
        """True when ``pid`` is still the process we started (not a reused pid)."""
        ct = _create_time(self.pid)
        return ct is not None and abs(ct - self.create_time) < 1.0


def state_dir() -> Path:
    """``<project>/.workbench`` (git-ignored), where the state, log and auth config live."""
    return get_settings().project_dir / STATE_DIRNAME


def default_state_file() -> Path:
    return state_dir() / "server.json"


def read_state(state_file: Path | None = None) -> ServerState | None:
    path = state_file or default_state_file()
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ServerError(
            f"the server state file {path} is unreadable ({exc}); delete it if no server runs"
        ) from exc


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


# ------------------------------------------------------------------ auth


def admin_password(*, prompt: bool = True) -> str:
    """The admin password: ``$MLFLOW_AUTH_ADMIN_PASSWORD``, else a prompt on a terminal.

    There is no default; without one ``start --auth`` refuses to run.
    """
    password = os.environ.get(ADMIN_PASSWORD_ENV, "")
    if not password and prompt and sys.stdin.isatty():
        password = getpass.getpass("admin password for the MLflow server (not echoed): ")
        if password and getpass.getpass("again: ") != password:
            raise UsageProblem("the two passwords differ; nothing was started")
    if not password:
        raise UsageProblem(
            "--auth needs an admin password and there is no default.\n"
            f"fix: export {ADMIN_PASSWORD_ENV}=... (at least {MIN_PASSWORD_LEN} characters) "
            "or run the command on a terminal to be prompted"
        )
    if len(password) < MIN_PASSWORD_LEN:
        raise UsageProblem(f"the admin password must have at least {MIN_PASSWORD_LEN} characters")
    return password


def require_auth_extra() -> None:
    """MLflow's basic-auth app needs Flask-WTF (the ``mlflow[auth]`` extra)."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise UsageProblem(
            "--auth needs MLflow's auth extra (Flask-WTF), which is not installed.\n"
            "fix: pip install 'mlflow[auth]' in this environment"
        )


def write_auth_config(folder: Path, *, username: str, password: str | None) -> Path:
    """Write MLflow's basic-auth config into a private folder (0700, file 0600).

    The auth database is SQLite in the same folder: only the server reads it. Anyone
    authenticated may read every experiment (``default_permission = READ``); writing needs
    ownership (the creator) or a granted permission.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    db = os.environ.get("WORKBENCH_AUTH_DATABASE_URI") or f"sqlite:///{folder / 'basic_auth.db'}"
    lines = [
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {db}",
        f"admin_username = {username}",
        *([f"admin_password = {password}"] if password else []),
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ]
    path = folder / "basic_auth.ini"
    _write_private(path, "\n".join(lines))
    return path


def _flask_secret_key(folder: Path) -> str:
    """A static secret key for the auth app's CSRF protection, kept across restarts."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = folder / "flask_secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    _write_private(path, key)
    return key


# ------------------------------------------------------------------ start / stop / status


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    *,
    auth: bool = False,
    workers: int | None = None,
) -> list[str]:
    """The ``mlflow server`` command line (this interpreter, so the venv's mlflow)."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        "--host", host, "--port", str(port),
        "--allowed-hosts", ",".join(allowed_hosts(host, port)),
    ]  # fmt: skip
    if workers or os.environ.get("WORKBENCH_SERVER_WORKERS"):
        cmd += ["--workers", str(workers or os.environ["WORKBENCH_SERVER_WORKERS"])]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # GenAI job execution starts extra consumer processes that a tracking server for
    # notebooks does not use; an explicit setting in the environment still wins.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop(ADMIN_PASSWORD_ENV, None)  # it goes through the private config file instead
    env.pop("MLFLOW_TRACKING_URI", None)  # a server must not log into another server
    return env


def launch(
    *,
    backend_store_uri: str,
    artifacts_destination: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    auth: bool = False,
    password: str | None = None,
    state_file: Path | None = None,
    workers: int | None = None,
    timeout: float = START_TIMEOUT_S,
) -> ServerState:
    """Start the server detached, wait for ``/health``, record and return its state.

    Raises ServerError (with the log's tail) when it cannot start or does not answer.
    """
    state_file = state_file or default_state_file()
    folder = state_file.parent
    current = read_state(state_file)
    if current is not None and current.is_ours():
        raise UsageProblem(
            f"a server started by workbench already runs (pid {current.pid}, {current.url}, "
            f"store {current.backend_store_uri}).\nfix: `workbench server stop` first"
        )
    if not backend_store_uri:
        raise UsageProblem(
            "--backend-store-uri is required, e.g. postgresql://USER@HOST:5432/mlflow "
            "(or sqlite:///team.db to try it out on one machine)"
        )
    store_uri = normalize_store_uri(backend_store_uri)
    if not port_free(host, port):
        raise UsageProblem(
            f"port {port} on {host} is already in use.\nfix: choose another with --port"
        )
    project = get_settings().project_dir
    dest = artifacts_destination or str(folder / "server-artifacts")
    if "://" not in dest:
        dest_path = (project / Path(dest).expanduser()).resolve()
        dest_path.mkdir(parents=True, exist_ok=True)
        dest = str(dest_path)

    folder.mkdir(parents=True, exist_ok=True)
    env = _child_env()
    auth_folder = folder / f"auth-{port}"
    if auth:
        require_auth_extra()
        username = os.environ.get(ADMIN_USERNAME_ENV) or "admin"
        pw = password if password is not None else admin_password()
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(
            write_auth_config(auth_folder, username=username, password=pw)
        )
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _flask_secret_key(auth_folder)
        env.pop(ADMIN_USERNAME_ENV, None)

    log = folder / f"server-{port}.log"
    cmd = server_command(store_uri, dest, host, port, auth=auth, workers=workers)
    with log.open("a") as fh:
        fh.write(f"\n==== workbench server start {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        fh.write("command: " + shlex.join(mask_uri(c) for c in cmd) + "\n")
    proc = spawn(cmd, env=env, log=log, cwd=folder)
    url = client_url(host, port)
    try:
        if not wait_http(url + "/health", proc=proc, timeout=timeout):
            if proc.poll() is not None:
                raise ServerError(
                    f"mlflow server exited with code {proc.returncode} before answering.\n"
                    f"log ({log}):\n{_log_tail(log)}"
                )
            raise ServerError(
                f"mlflow server did not answer {url}/health within {timeout:.0f} s.\nlog ({log}):\n{_log_tail(log)}"
            )
    except BaseException:
        stop_group(proc.pid)
        raise
    finally:
        if auth:
            # The admin user exists now (or start failed): the password leaves the disk.
            write_auth_config(auth_folder, username=username, password=None)
    state = ServerState(
        pid=proc.pid,
        create_time=_create_time(proc.pid) or 0.0,
        host=host,
        port=port,
        url=url,
        backend_store_uri=mask_uri(store_uri),
        artifacts_destination=dest,
        auth=auth,
        log=str(log),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    _write_private(state_file, json.dumps(asdict(state), indent=2))
    return state


def shutdown(state_file: Path | None = None) -> ServerState | None:
    """Stop the server recorded in ``state_file`` if it is still the process we started.

    Returns the state it stopped, or None when there was nothing of ours to stop. The
    state file goes either way (a stale one would only mislead).
    """
    state_file = state_file or default_state_file()
    state = read_state(state_file)
    if state is None:
        return None
    stopped = None
    if state.is_ours():
        stop_group(state.pid)
        stopped = state
    state_file.unlink(missing_ok=True)
    return stopped


def start(
    *,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str,
    port: int,
    auth: bool,
) -> int:
    """``workbench server start``: start, wait for /health, print what to export."""
    try:
        if auth:
            require_auth_extra()
            password = admin_password()  # refuse before anything starts
        if backend_store_uri:
            print(
                f"starting mlflow server on {mask_uri(normalize_store_uri(backend_store_uri))} ...",
                flush=True,
            )
        state = launch(
            backend_store_uri=backend_store_uri or "",
            artifacts_destination=artifacts_destination,
            host=host,
            port=port,
            auth=auth,
            password=password if auth else None,
        )
    except ServerError as exc:
        print(f"workbench server start: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageProblem) else EXIT_FAILED
    print(f"mlflow server answering at {state.url}")
    print(f"  store:      {state.backend_store_uri}")
    print(
        f"  artifacts:  {state.artifacts_destination} (proxied: clients upload through the server)"
    )
    print(
        f"  auth:       {'basic-auth (admin user created from the given password)' if auth else 'off'}"
    )
    print(f"  log:        {state.log}   pid {state.pid}")
    if host not in LOOPBACK:
        print(f"  bound to {host}: put a TLS reverse proxy in front (see docs/team-mode.md).")
        if not auth:
            print("  WARNING: no --auth: anyone who reaches this port can read and write.")
    print("\nPoint notebooks and the workbench command at it:")
    print(f"  export MLFLOW_TRACKING_URI={state.url}")
    if auth:
        print("  export MLFLOW_TRACKING_USERNAME=<user> MLFLOW_TRACKING_PASSWORD=<password>")
    print("Stop it with: workbench server stop")
    return EXIT_OK


def stop() -> int:
    """``workbench server stop``: stop what ``start`` started, and nothing else."""
    try:
        state = read_state()
        stopped = shutdown()
    except ServerError as exc:
        print(f"workbench server stop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if stopped is not None:
        print(f"stopped the mlflow server at {stopped.url} (pid {stopped.pid})")
    elif state is not None:
        print(
            f"the server recorded at {state.url} (pid {state.pid}) was no longer running; state cleared"
        )
    else:
        print("no server started by `workbench server start` in this project; nothing to stop")
    return EXIT_OK


def status() -> int:
    """``workbench server status``: whether it answers and which store it uses.

    Exit 0 when a server answers, 1 when none does.
    """
    try:
        state = read_state()
    except ServerError as exc:
        print(f"workbench server status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if state is not None:
        alive = state.is_ours()
        answers = alive and health(state.url)
        word = (
            "answering"
            if answers
            else ("running but not answering" if alive else "not running (stale state)")
        )
        print(f"server {word}: {state.url}  pid {state.pid}  started {state.started_at}")
        print(f"  store:     {state.backend_store_uri}")
        print(f"  artifacts: {state.artifacts_destination}")
        print(f"  auth:      {'basic-auth' if state.auth else 'off'}")
        print(f"  log:       {state.log}")
        return EXIT_OK if answers else EXIT_FAILED
    settings = get_settings()
    if settings.is_remote:
        answers = health(settings.tracking_uri)
        print(
            f"no server started here; MLFLOW_TRACKING_URI points at {settings.tracking_uri}: {'answering' if answers else 'NOT answering'}"
        )
        return EXIT_OK if answers else EXIT_FAILED
    print(
        f"no server started by `workbench server start` here; the configured store is {mask_uri(settings.tracking_uri)} (embedded)"
    )
    return EXIT_FAILED


# ------------------------------------------------------------------ workbench ui


def ui_command(host: str, port: int) -> list[str]:
    """``mlflow server`` over the configured store, artifacts read where the store keeps them.

    No artifact proxy: the embedded store's experiments point at ``file://`` folders that
    notebooks write directly, and the UI reads them from there.
    """
    settings = get_settings()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", normalize_store_uri(settings.tracking_uri, settings.project_dir),
        "--no-serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
        "--allowed-hosts", ",".join(allowed_hosts(host, port)),
    ]  # fmt: skip
    if settings.artifact_root is not None:
        cmd += ["--default-artifact-root", settings.artifact_root.as_uri()]
    return cmd


def start_ui(host: str, port: int, log: Path) -> subprocess.Popen:
    """Prepare the configured store once, then start the UI process (detached group)."""
    from workbench import store

    settings = get_settings()
    store.connect(settings, activate=False)  # a fresh SQLite store is migrated once, under a lock
    if settings.artifact_root is not None:
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
    if not port_free(host, port):
        raise UsageProblem(
            f"port {port} on {host} is already in use.\nfix: choose another with --port"
        )
    return spawn(ui_command(host, port), env=_child_env(), log=log, cwd=settings.project_dir)


def wait_healthy(
    proc: subprocess.Popen, url: str, log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    """Wait until ``url``/health answers; raise ServerError if the process dies or times out."""
    if wait_http(url.rstrip("/") + "/health", proc=proc, timeout=timeout):
        return
    if proc.poll() is not None:
        raise ServerError(
            f"the MLflow UI exited with code {proc.returncode}.\nlog ({log}):\n{_log_tail(log)}"
        )
    raise ServerError(
        f"the MLflow UI did not answer {url} within {timeout:.0f} s.\nlog ({log}):\n{_log_tail(log)}"
    )


@contextlib.contextmanager
def terminate_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt while in the foreground, so cleanup runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def ui(*, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``workbench ui``: the MLflow UI on the configured store until Ctrl-C."""
    settings = get_settings()
    if settings.is_remote:
        print(f"the configured store is a tracking server: its UI is {settings.tracking_uri}")
        return EXIT_OK
    log = state_dir() / f"ui-{port}.log"
    with terminate_on_sigterm():
        proc = None
        try:
            proc = start_ui(host, port, log)
            url = client_url(host, port)
            wait_healthy(proc, url, log)
            print(
                f"MLflow UI: {url}  (store {mask_uri(settings.tracking_uri)}; Ctrl-C stops it)",
                flush=True,
            )
            if host not in LOOPBACK:
                print(f"  bound to {host}: anyone who reaches this port sees every run", flush=True)
            while proc.poll() is None:
                time.sleep(0.5)
            print(f"the MLflow UI exited with code {proc.returncode}; log: {log}", file=sys.stderr)
            return EXIT_FAILED
        except ServerError as exc:
            print(f"workbench ui: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, UsageProblem) else EXIT_FAILED
        except KeyboardInterrupt:
            print("stopping the MLflow UI", flush=True)
            return EXIT_OK
        finally:
            if proc is not None:
                stop_group(proc.pid)
                proc.wait()
