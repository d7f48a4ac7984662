"""The pure parts of workbench.server: store URIs, masking, allowed hosts, the command line,
and the private auth configuration (no server started here)."""

from __future__ import annotations

import stat

import pytest

from workbench import server


def test_postgres_urls_get_psycopg3_and_sqlite_paths_become_absolute(tmp_path):
    assert (
        server.normalize_store_uri("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    )
    assert server.normalize_store_uri("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert (
        server.normalize_store_uri("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    )
    assert (
        server.normalize_store_uri("sqlite:///team.db", tmp_path)
        == f"sqlite:///{tmp_path.resolve() / 'team.db'}"
    )
    with pytest.raises(server.UsageProblem, match="not a backend store"):
        server.normalize_store_uri("http://127.0.0.1:5000")


def test_passwords_are_masked():
    assert (
        server.mask_uri("postgresql+psycopg://mlflow:hunter2@db:5432/mlflow")
        == "postgresql+psycopg://mlflow:***@db:5432/mlflow"
    )
    assert server.mask_uri("postgresql://mlflow@db/mlflow") == "postgresql://mlflow@db/mlflow"


def test_allowed_hosts_are_loopback_plus_what_is_named(monkeypatch):
    monkeypatch.delenv("WORKBENCH_ALLOWED_HOSTS", raising=False)
    local = server.allowed_hosts("127.0.0.1", 5000)
    assert set(local) == {
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.0.0.1:5000",
        "[::1]",
        "[::1]:5000",
    }
    assert not any(h.startswith(("10.", "192.168.")) for h in local), (
        "narrower than MLflow's default"
    )
    monkeypatch.setenv("WORKBENCH_ALLOWED_HOSTS", "mlflow.team.example, proxy:8443")
    shared = server.allowed_hosts("10.0.0.7", 5000)
    assert {"10.0.0.7", "10.0.0.7:5000", "mlflow.team.example", "proxy:8443"} <= set(shared)
    assert "proxy:8443:5000" not in shared


def test_server_command_proxies_artifacts_and_sets_hosts(monkeypatch):
    monkeypatch.delenv("WORKBENCH_SERVER_WORKERS", raising=False)
    cmd = server.server_command("127.0.0.1", 5001, auth=True, workers=2)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    for flag, value in (
        ("--host", "127.0.0.1"),
        ("--port", "5001"),
        ("--workers", "2"),
        ("--app-name", "basic-auth"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--serve-artifacts" in cmd and "--allowed-hosts" in cmd
    # the store and the artifact destination (which may hold passwords) go by environment
    assert "--backend-store-uri" not in cmd and "--artifacts-destination" not in cmd
    env = server.store_env("postgresql+psycopg://u:pw@h/db", artifacts_destination="/srv/a")
    assert env == {
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://u:pw@h/db",
        "MLFLOW_ARTIFACTS_DESTINATION": "/srv/a",
    }


def test_auth_config_is_private_and_holds_no_admin_credentials(tmp_path, monkeypatch):
    import configparser

    folder = tmp_path / "auth"
    db = "postgresql+psycopg://auth:p%40ss%25w@db/auth"  # URL-encoded: '%' in the value
    monkeypatch.setenv("WORKBENCH_AUTH_DATABASE_URI", db)
    ini = server.write_auth_config(folder)
    assert (
        stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(ini.stat().st_mode) == 0o600
    )
    assert "admin_password" not in ini.read_text() and "admin_username" not in ini.read_text()
    parsed = configparser.ConfigParser()  # as MLflow reads it: interpolation on
    parsed.read(ini)
    assert (
        parsed["mlflow"]["database_uri"] == db and parsed["mlflow"]["default_permission"] == "READ"
    )
    monkeypatch.setenv("WORKBENCH_AUTH_DATABASE_URI", "sqlite:///x.db\nadmin_password = injected")
    with pytest.raises(server.UsageProblem, match="line break"):
        server.write_auth_config(folder)
    # the admin's credentials go through the environment, exactly as given
    assert server.admin_env("admin", " 50% off %(x)s ") == {
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": " 50% off %(x)s ",
    }


def test_admin_password_is_required_and_long_enough(monkeypatch):
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    with pytest.raises(server.UsageProblem, match="no default"):
        server.admin_password(prompt=False)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    with pytest.raises(server.UsageProblem, match="at least 12"):
        server.admin_password(prompt=False)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "long-enough-password")
    assert server.admin_password(prompt=False) == "long-enough-password"


def test_loopback_is_this_machine_only():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert server.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.7", "192.168.1.20", "fe80::1", "example.invalid"):
        assert not server.is_loopback(host), host


def test_ui_on_a_tracking_server_points_at_it(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert server.ui(host="127.0.0.1", port=server.free_port()) == 0
    assert "its UI is http://127.0.0.1:1" in capsys.readouterr().out
