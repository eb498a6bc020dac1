"""A fleet from one Prefect server: `pvcheck serve --config a --config b` verifies two hosts
(the lab's engine here, and the same engine reached over ssh as a second host), each with
its own deployments, lock, staggered night and evidence, and a fleet table of both."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pvcheck.config import Config
from tests.helpers import ROOT, write_config
from tests.integration.test_prefect_server import (  # noqa: F401 - `server` is a fixture
    _deployments,
    _post,
    _wait,
    api_env,
    server,
)
from tests.integration.test_ssh_target import Sshd, _over_ssh, sshd  # noqa: F401

pytestmark = [pytest.mark.slow]


def _named(name: str, then: Any = None) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        if then is not None:
            then(raw)
        raw["target"]["name"] = name

    return mutate


def test_one_server_verifies_two_hosts_with_their_own_deployments(
    server: str,  # noqa: F811 - the fixture imported above
    sshd: Sshd,  # noqa: F811
    lab: Config,
    tmp_path: Path,
) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir(mode=0o755)
    remote.mkdir(mode=0o755)
    configs = [
        write_config(local, _named("lab")),
        write_config(remote, _named("lab-ssh", _over_ssh(sshd))),
    ]
    env = api_env(server)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "pvcheck.app.cli", "serve", "--cron", "17 3 * * *"]
    for config in configs:
        argv += ["--config", str(config)]
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(_deployments(server)) < 8:
            said = (tmp_path / "serve.log").read_text()[-3000:]
            assert proc.poll() is None and time.monotonic() < deadline, said
            time.sleep(1)
        deps = _deployments(server)
        for host in ("lab", "lab-ssh"):
            assert {f"{k}-{host}" for k in ("manual", "nightly", "review", "janitor")} <= set(deps)
            assert deps[f"manual-{host}"]["parameters"]["target"] == host
        crons = {
            h: deps[f"nightly-{h}"]["schedules"][0]["schedule"]["cron"] for h in ("lab", "lab-ssh")
        }
        assert crons == {"lab": "17 3 * * *", "lab-ssh": "37 3 * * *"}  # staggered
        finals = {}
        for host in ("lab", "lab-ssh"):  # one engine behind both: one after the other
            run = _post(server, f"/deployments/{deps[f'manual-{host}']['id']}/create_flow_run", {})
            finals[host] = _wait(server, str(run["id"]), timeout_s=400)
            assert finals[host]["state_type"] == "COMPLETED", finals[host]["state"]
        # Each host's evidence in its own docs folder; the remote one was reached over ssh.
        report_remote = json.loads((remote / "docs" / "REPORT-pvcheck.json").read_text())
        assert report_remote["target"] == "lab-ssh"
        assert report_remote["target_via"].startswith("ssh root@127.0.0.1")
        assert json.loads((local / "docs" / "REPORT-pvcheck.json").read_text())["target"] == "lab"
        artifacts = _post(
            server,
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [finals["lab-ssh"]["id"]]}}},
        )
        (fleet,) = [a for a in artifacts if a["key"] == "pvcheck-fleet"]
        rows = json.loads(fleet["data"]) if isinstance(fleet["data"], str) else fleet["data"]
        assert {r["host"]: r["verdict"] for r in rows} == {"lab": "PASS", "lab-ssh": "PASS"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
