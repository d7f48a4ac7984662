"""A throwaway PostgreSQL cluster for the team-mode tests and benchmarks.

PostgreSQL refuses to run as root, and CI and sessions run as root: then ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user (``runuser -u postgres --``) on a data folder
and a socket folder that user owns. As any other user they run directly. The cluster
listens on a free loopback port only, with ``trust`` authentication for local test use.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workbench.core.ports import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found. Install PostgreSQL 15, e.g. "
    "`apt-get install postgresql-15` (Debian) or `conda install -c conda-forge postgresql`, "
    "and put its bin folder on PATH."
)


class PgUnavailable(RuntimeError):
    """The PostgreSQL binaries or the unprivileged user to run them are missing."""


def pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL server binary: on PATH, else in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PgCluster:
    """A running cluster: ``url(db)`` gives a SQLAlchemy/psycopg URL for a database."""

    root: Path
    port: int
    pg_ctl: str
    prefix: list[str]
    user: str = "postgres"
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=db, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its plain ``postgresql://`` URL."""
        with self.connect() as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, db: str, sql: str, params: tuple = ()) -> list[tuple]:
        with self.connect(db) as con:
            return con.execute(sql, params).fetchall()

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    """initdb + pg_ctl start on a free loopback port; raises PgUnavailable with the fix."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise PgUnavailable(INSTALL_HINT)
    prefix: list[str] = []
    # Not pytest's tmp_path: its parents are private to root, and postgres must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(root)
            raise PgUnavailable(
                "running as root and there is no `postgres` system user to run PostgreSQL as"
            ) from exc
        runuser = shutil.which("runuser")
        if not runuser:
            shutil.rmtree(root)
            raise PgUnavailable("running as root and `runuser` (util-linux) is missing")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    os.chmod(root, 0o700)
    port = free_port()
    data, log = root / "data", root / "postgres.log"

    def run(*cmd: str) -> None:
        out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd[:2])} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n{tail}"
            )

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        opts = f"-k {root} -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200"
        run(pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
    except BaseException:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)
        raise
    return PgCluster(root=root, port=port, pg_ctl=pg_ctl, prefix=prefix)
