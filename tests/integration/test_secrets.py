"""Secrets never leave the process: a full run with the Drone driver and a known token, where
the Drone echoes the token back inside a step name, and every output is searched for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.masking import MASK
from tests.fakes import drone_server
from tests.helpers import drone_settings, write_config

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_api")]

TOKEN = "drone-secret-7d41aa0c93-LEAK-CANARY"


def _prefect_outputs(run_id: str) -> str:
    """Every log line and artifact the Prefect API holds for the run."""
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id]))
        )
        deadline = time.monotonic() + 60
        while True:  # the last lines reach the API after the run's final state
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
            )
            text = "\n".join(entry.message for entry in logs)
            if "verdict" in text or time.monotonic() > deadline:
                break
            time.sleep(1)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert logs and artifacts
    return text + "\n" + "\n".join(json.dumps(a.model_dump(mode="json")) for a in artifacts)


def test_a_known_token_appears_in_no_output(
    lab: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    with drone_server(TOKEN, final="failure") as (url, state):
        # A hostile (or careless) CI echoes the token back in what pvcheck reads and reports.
        state.steps = {"install": "success", f"upgrade with Bearer {TOKEN}": "failure"}

        config = write_config(tmp_path, drone_settings(url, timeout_s=30, poll_s=0.2))
        out, junit = tmp_path / "report.json", tmp_path / "junit.xml"
        rc = main(["run", "--config", str(config), "--json", str(out), "--junit", str(junit)])
    assert state.auth == {f"Bearer {TOKEN}"}  # the token was really used
    report = json.loads(out.read_text())
    upgrade = next(c for c in report["checks"] if c["id"] == "deploy.tier.upgrade")
    assert upgrade["status"] == "fail" and f"Bearer {MASK}" in upgrade["detail"]  # masked echo
    captured = capfd.readouterr()
    outputs = {
        "stdout": captured.out,
        "stderr": captured.err,
        "prefect logs and artifacts": _prefect_outputs(report["run_id"]),
        **{p.name: p.read_text(errors="replace") for p in (tmp_path / "docs").iterdir()},
        **{p.name: p.read_text() for p in (out, junit)},
    }
    assert {"STATUS-pvcheck.md", "JOURNAL-pvcheck.md", "HISTORY-pvcheck.jsonl"} <= set(outputs)
    leaked = [name for name, text in outputs.items() if TOKEN in text]
    assert not leaked, f"the token leaked into {leaked}"
    assert rc == 1
