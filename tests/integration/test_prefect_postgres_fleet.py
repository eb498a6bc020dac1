"""The fleet's server on PostgreSQL (issue 28): a real PostgreSQL (Debian's), a Prefect server
on it (PREFECT_API_DATABASE_CONNECTION_URL), `pvcheck serve` of two hosts (the lab and the
cc-ci twin) against that server, and a run of each host's deployment, read back from the
database itself."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvcheck.api import free_port, wait_healthy
from pvcheck.config import Config
from tests.helpers import ROOT, write_config
from tests.integration.test_cc_ci_twin import overlay
from tests.integration.test_prefect_server import AUTH, _deployments, _trigger, _wait, api_env

pytestmark = [pytest.mark.slow]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*argv: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, (argv, done.stdout[-1500:], done.stderr[-1500:])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of the test's own on a loopback port: its SQLAlchemy URL."""
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("Debian's postgresql-15 is not installed")
    # Under /tmp, not pytest's root-only folder: the postgres user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="pvcheck-pg-"))
    shutil.chown(folder, "postgres")
    password = secrets.token_hex(16)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, "postgres")
    data, port = folder / "data", free_port()
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                 "-A", "scram-sha-256", f"--pwfile={pwfile}")  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                 "-o", options, "-w", "start")  # fmt: skip
    try:
        env = {**os.environ, "PGPASSWORD": password}
        psql = [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        subprocess.run([*psql, "-c", "CREATE DATABASE prefect"], env=env, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        yield f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{port}/prefect"
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _sql(url: str, query: str) -> str:
    """One query's result, through psql on the URL's server."""
    rest = url.split("://", 1)[1]
    creds, _, where = rest.partition("@")
    user, password = creds.split(":", 1)
    hostport, _, db = where.partition("/")
    host, port = hostport.split(":")
    done = subprocess.run(
        ["psql", "-h", host, "-p", port, "-U", user, "-d", db, "-tA", "-c", query],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def pg_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server on the PostgreSQL database, requiring the tests' auth string."""
    home = tmp_path_factory.mktemp("prefect-pg-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
    }
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api"
        try:
            assert wait_healthy(url, 300, proc), (home / "server.log").read_text()[-3000:]
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def test_a_fleet_served_from_a_postgresql_backed_server_runs_each_host(
    postgres: str,
    pg_server: str,
    lab: Config,
    cc_ci_twin: Config,
    tmp_path: Path,
) -> None:
    from pvcheck.lab import lab_up

    # The twin as the session made it may be gone: `lab down` (test_lab.py) removes every lab
    # service, the twin's too, and brings back only the lab. Up again (idempotent).
    lab_up(cc_ci_twin)
    (tmp_path / "lab").mkdir()
    (tmp_path / "twin").mkdir()
    configs = [write_config(tmp_path / "lab"), overlay(tmp_path / "twin")]
    argv = [sys.executable, "-m", "pvcheck.app.cli", "serve"]
    for config in configs:
        argv += ["--config", str(config)]
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=api_env(pg_server), cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while len(_deployments(pg_server)) < 8:  # four per host
                said = (tmp_path / "serve.log").read_text()[-3000:]
                assert serve.poll() is None and time.monotonic() < deadline, said
                time.sleep(1)
            # One after the other: both hosts live on this machine's one engine, whose
            # engine-side lock would cancel the second.
            finals = {}
            for name in ("manual-lab", "manual-cc-ci-twin"):
                finals[name] = _wait(pg_server, _trigger(pg_server, name), timeout_s=600)
        finally:
            serve.terminate()
            serve.wait(timeout=120)
    for name, final in finals.items():
        assert final["state_type"] == "COMPLETED", (name, final["state"])
        assert final["state"]["message"].startswith("pvcheck verdict PASS"), final["state"]
    # The runs are PostgreSQL's: read back from the database, not through the API.
    rows = _sql(
        postgres,
        "SELECT d.name, r.state_type FROM flow_run r JOIN deployment d ON d.id = r.deployment_id "
        "WHERE d.name LIKE 'manual-%' ORDER BY d.name",
    )
    assert rows.splitlines() == ["manual-cc-ci-twin|COMPLETED", "manual-lab|COMPLETED"]
    evidence = [tmp_path / "lab" / "docs", tmp_path / "twin" / "docs"]
    for docs in evidence:
        assert "M2" in (docs / "STATUS-pvcheck.md").read_text()
