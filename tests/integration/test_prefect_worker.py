"""Deployed the Prefect way: prefect.yaml through `prefect deploy --all` to a process work
pool, and `pvcheck worker` (a real `prefect worker`) running one of its deployments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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

pytestmark = [pytest.mark.slow]


def test_a_process_worker_runs_a_deployment_declared_in_prefect_yaml(
    server: str,  # noqa: F811 - the fixture imported above
    lab: Config,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    env = api_env(server, PREFECT_WORKER_QUERY_SECONDS="2", PVCHECK_HOME=str(ROOT))
    prefect = str(Path(sys.executable).parent / "prefect")
    for argv in (
        [prefect, "work-pool", "create", "pvcheck", "--type", "process"],
        [prefect, "--no-prompt", "deploy", "--all"],
    ):
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    deployments = _deployments(server)
    assert {"manual", "nightly", "review", "janitor"} <= set(deployments)
    assert all(d["work_pool_name"] == "pvcheck" for d in deployments.values())
    nightly = deployments["nightly"]["schedules"][0]["schedule"]
    assert (nightly["cron"], nightly["timezone"]) == ("17 0 * * *", "UTC")
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvcheck.app.cli",
            "worker",
            "--config",
            str(config),
            "--pool",
            "pvcheck",
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        dep = deployments["janitor"]
        run = _post(server, f"/deployments/{dep['id']}/create_flow_run", {})
        final = _wait(server, str(run["id"]), timeout_s=300)
        said = (tmp_path / "worker.log").read_text()[-3000:]
        assert final["state_type"] == "COMPLETED", (final["state"], said)
        assert final["state"]["message"].startswith("janitor: reaped"), final["state"]
        assert worker.poll() is None, said  # still serving the pool
    finally:
        worker.terminate()
        try:  # Prefect's worker shuts down gracefully; under CI load that took over a minute
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            raise
        finally:
            log.close()
