"""The verification flow against the real lab: gate M1 passes, fails, and says why."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.hostfacts import parse_network
from pvcheck.lab import wait_routes
from pvcheck.swarm import Swarm
from tests.helpers import write_config

pytestmark = [pytest.mark.usefixtures("prefect_api")]


def run(config: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    rc = main(["run", "--config", str(config), "--json", str(out)])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["id"] == check_id)


def test_healthy_lab_passes_m1_with_real_numbers(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    rc, report = run(config, tmp_path)
    assert rc == 0, report
    assert report["verdict"] == "pass" and report["gates"]["M1"]["status"] == "pass"
    assert {c["status"] for c in report["checks"] if c["gate"] == "M1"} == {"pass"}
    live = parse_network(engine.network("proxy") or {})
    after = report["facts"]["after"]["network"]
    assert after["subnet"] == live.subnet and after["vips"] == live.vips
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert "## Gate: M1 — CLAIMED, awaiting Adversary" in status
    assert f"| service VIPs | {report['facts']['before']['network']['vips']} |" in status
    assert f"| capacity | {live.capacity} | {live.capacity} |" in status
    assert report["run_id"] in (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()


@pytest.fixture
def reports_scaled_to_zero(lab: Config) -> Iterator[str]:
    client = docker.from_env()
    service = client.services.get("lab-reports_app")  # type: ignore[no-untyped-call]
    service.scale(0)
    try:
        yield "lab-reports_app"
    finally:
        client.services.get("lab-reports_app").scale(1)  # type: ignore[no-untyped-call]
        wait_routes(lab, 60)


@pytest.mark.faults
def test_scaled_down_standin_fails_m1_and_blocks_traffic(
    lab: Config, tmp_path: Path, reports_scaled_to_zero: str
) -> None:
    deadline = time.monotonic() + 30
    while (
        docker.from_env()  # type: ignore[no-untyped-call]
        .services.get(reports_scaled_to_zero)
        .attrs.get("ServiceStatus", {})
        .get("RunningTasks", 1)
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    rc, report = run(write_config(tmp_path), tmp_path)
    assert rc == 1
    assert report["gates"]["M1"]["status"] == "fail"
    svc = check(report, f"svc.{reports_scaled_to_zero}")
    assert svc["status"] == "fail" and reports_scaled_to_zero in svc["detail"]
    assert check(report, "route.reports")["status"] == "fail"
    for stage in ("deploy", "allocator"):
        assert report["stages"][stage].startswith("skipped: no new test traffic")
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert "## Gate: M1 — NOT CLAIMED (FAIL)" in status and "Fix routing first" in status
    backlog = (tmp_path / "docs" / "BACKLOG-pvcheck.md").read_text()
    assert f"`svc.{reports_scaled_to_zero}`" in backlog


@pytest.mark.faults
def test_broken_route_fails_m1_naming_it(lab: Config, tmp_path: Path) -> None:
    def add_broken(raw: dict[str, Any]) -> None:
        raw["routes"].append(
            {"name": "ghost", "url": "http://ghost.lab.test/", "connect_to": "127.0.0.1:18080"}
        )

    rc, report = run(write_config(tmp_path, add_broken), tmp_path)
    assert rc == 1
    ghost = check(report, "route.ghost")
    assert ghost["status"] == "fail" and ghost["found"] == "HTTP 404"
    assert "route ghost (http://ghost.lab.test/) is down" in ghost["detail"]
    assert report["stages"]["traffic"] == "blocked"


def test_other_subnet_fails_the_precondition(lab: Config, tmp_path: Path) -> None:
    def other_subnet(raw: dict[str, Any]) -> None:
        raw["network"]["subnet"] = "10.30.0.0/16"

    rc, report = run(write_config(tmp_path, other_subnet), tmp_path)
    assert rc == 1
    net = check(report, "pre.network")
    assert net["status"] == "fail"
    assert "10.30.0.0/16" in net["expected"] and "10.10.0.0/16" in net["found"]
    assert net["detail"] == "expected subnet 10.30.0.0/16, found 10.10.0.0/16"


def test_missing_pvfix_done_fails_the_precondition(lab: Config, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "docs" / "STATUS-pvfix.md").write_text("# pvfix\n\n```\n## DONE\n```\n")
    rc, report = run(config, tmp_path)
    assert rc == 1 and check(report, "pre.pvfix-done")["found"] == "no ## DONE line"


@pytest.mark.faults
def test_rerun_keeps_hand_written_text(lab: Config, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, tmp_path)[0] == 0
    status = tmp_path / "docs" / "STATUS-pvcheck.md"
    mine = "\n## Operator notes\n\nTraefik restarted at 03:10 on purpose.\n"
    status.write_text(status.read_text() + mine)
    journal = (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
    assert run(config, tmp_path)[0] == 0
    assert status.read_text().endswith(mine)
    grown = (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
    assert grown.startswith(journal) and grown.count("— run `pv-") == 2


@pytest.mark.faults
def test_unreachable_engine_exits_3_and_writes_only_a_journal_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def nowhere(raw: dict[str, Any]) -> None:
        raw["target"]["docker_host"] = f"unix://{tmp_path}/no-docker.sock"
        raw["target"]["api_attempts"] = 1

    config = write_config(tmp_path, nowhere)
    assert main(["run", "--config", str(config)]) == 3
    assert "unreachable" in capsys.readouterr().err
    # Only the journal entry (and the folder's lock file, which every write takes).
    docs = sorted(p.name for p in (tmp_path / "docs").iterdir() if p.name != ".pvcheck.lock")
    assert docs == ["JOURNAL-pvcheck.md", "STATUS-pvfix.md"]
    assert "UNREACHABLE" in (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
