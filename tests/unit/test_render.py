"""Golden tests of the rendered Markdown, and the backlog's one-item-per-check rule.

Regenerate the golden files after an intended change with PVCHECK_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pvcheck.allocator import AllocatorResult, RoundFigures
from pvcheck.backlog import BUILD_SECTION, BuildItem, merge_build, parse_backlog
from pvcheck.capacity import HeldCount
from pvcheck.claims import curl_command
from pvcheck.config import Config, load_config
from pvcheck.evidence import (
    render,
    render_journal_entry,
    render_status_sections,
    write_evidence,
)
from pvcheck.hostfacts import HostFacts, NetworkFacts, ServiceFacts
from pvcheck.logscan import LogScan
from pvcheck.records import Check, Gate, Outcome, Stage, StageOutcome, Status
from pvcheck.report import Report
from pvcheck.statefiles import replace_section
from tests.helpers import LAB_CONFIG

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def facts(taken: str, used_tasks: int, drone_running: int) -> HostFacts:
    return HostFacts(
        taken_at=taken,
        network=NetworkFacts("proxy", "10.20.0.0/16", "overlay", 65533, 5, used_tasks, 1, 0, ["a"]),
        services=[
            ServiceFacts("lab-traefik_app", True, 1, 1, {"running": 1}, 2),
            ServiceFacts("lab-drone_app", True, drone_running, 1, {"running": drone_running}, 0),
        ],
        stacks={"lab-traefik": 1, "lab-drone": 1},
    )


def sample_report(failing: bool) -> Report:
    counts = {"vips": 5, "task_ips": 5, "lb_endpoints": 1, "containers": 0}
    checks = [
        Check("pre.pvfix-done", Gate.M1, Status.PASS, "DONE", "## DONE present"),
        Check(
            "svc.lab-drone_app",
            Gate.M1,
            Status.FAIL if failing else Status.PASS,
            "running = desired",
            "lab-drone_app: 0/1 running" if failing else "1/1",
            "scaled to 0",
        ),
        Check(
            "route.dashboard", Gate.M1, Status.PASS, "HTTP 200", "HTTP 200 | ok", duration_s=0.012
        ),
    ]
    checks += [
        Check(cid, Gate.M2, Status.PASS, "e", found)
        for cid, found in [
            ("deploy.tier.install", "pass"),
            ("alloc.leak", "leaked 0 endpoints"),
            (
                "logs.fresh-run",
                "0 VIP lines (2026-11-26T12:00:00Z -> 2026-11-26T12:00:07Z); failed_allocation 0",
            ),
            ("teardown.residue", "0 left"),
            ("guard.detects", "1 on the signature sample, 0 on the clean sample"),
        ]
    ]
    report = Report(
        run_id="pv-20261126120000-abc123",
        target="lab",
        config_path="/etc/pvcheck/lab.toml",
        started_at="2026-11-26T12:00:00Z",
        finished_at="2026-11-26T12:00:09Z",
        checks=checks,
        stages={
            Stage.PRECONDITIONS: StageOutcome(Outcome.FAIL if failing else Outcome.PASS),
            Stage.TRAFFIC: StageOutcome(Outcome.BLOCKED if failing else Outcome.ALLOWED),
        },
        facts_before=facts("2026-11-26T12:00:01Z", 5, 0 if failing else 1),
        facts_after=facts("2026-11-26T12:00:08Z", 5, 0 if failing else 1),
        logs=LogScan(
            "file /var/log/d.log",
            "2026-11-25T10:00:00Z",
            "2026-11-26T12:00:00Z",
            {"vip_exhausted": 0, "key_modified": 1},
            ['time="x" msg="key modified"'],
            # A failing run whose docker log could not be read says so instead of counts.
            error="/var/log/d.log: Permission denied" if failing else None,
        ),
        run_logs=LogScan(
            "file /var/log/d.log",
            "2026-11-26T12:00:00Z",
            "2026-11-26T12:00:07Z",
            {"vip_exhausted": 0, "failed_allocation": 0},
        ),
        allocator=AllocatorResult(
            "proxy",
            65533,
            11,
            11,
            datetime(2026, 11, 26, 12, 0, 2, tzinfo=UTC),
            datetime(2026, 11, 26, 12, 0, 6, tzinfo=UTC),
            [RoundFigures(1, 5, counts, counts, counts, True, True, 4.0)],
            scratch="pvc-scratch-abc123",
            scratch_count=HeldCount("pvc-scratch-abc123", 253, 0, 248, True, "fill-probe"),
            removals_per_day=20.0,
        ),
    )
    return report


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    # Fixed absolute paths: the golden files must not depend on where the checkout lives.
    return load_config(
        LAB_CONFIG, {"docs": {"dir": "/srv/docs"}, "guard": {"file": "/srv/ops/SKILL.md"}}
    )


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PVCHECK_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.mark.parametrize("failing", [False, True], ids=["pass", "fail"])
def test_status_sections_golden(cfg: Config, failing: bool) -> None:
    sections = render_status_sections(sample_report(failing), cfg)
    kind = "fail" if failing else "pass"
    for name, text in sections.items():
        golden(f"status-{name}-{kind}.md", text)


def test_status_claim_format(cfg: Config) -> None:
    gate = render_status_sections(sample_report(False), cfg)["gate-M1"]
    assert gate.startswith("## Gate: M1 — CLAIMED, awaiting Adversary\n")
    for heading in (
        "### WHAT is claimed",
        "### HOW to verify (cold commands)",
        "### EXPECTED",
        "### WHERE",
    ):
        assert heading in gate
    failed = render_status_sections(sample_report(True), cfg)["gate-M1"]
    assert failed.startswith("## Gate: M1 — NOT CLAIMED (FAIL)")
    summary = render_status_sections(sample_report(True), cfg)["summary"]
    assert "Fix routing first" in summary


def test_journal_and_verdict_golden(cfg: Config) -> None:
    golden("journal-entry-fail.md", render_journal_entry(sample_report(True), cfg))
    golden("verdict-fail.md", render("verdict.md.j2", report=sample_report(True)))


def test_curl_command_quotes_and_connects_to(cfg: Config) -> None:
    route = cfg.routes[0]
    assert curl_command(route) == (
        "curl -s -o /dev/null -w '%{http_code}\\n' --connect-to "
        "drone.lab.test:80:127.0.0.1:18080 http://drone.lab.test/"
    )


def test_backlog_has_one_item_per_failing_check_and_ticks_fixed_ones() -> None:
    failing = sample_report(True)
    items = merge_build([], failing)
    assert [(i.num, i.check_id, i.done) for i in items] == [("B1", "svc.lab-drone_app", False)]

    def read_back(items: list[BuildItem]) -> list[BuildItem]:
        body = "\n".join(i.text for i in items)
        return parse_backlog(replace_section("", BUILD_SECTION, body, "B"), "B").build

    again = merge_build(read_back(items), failing)
    assert len(again) == 1  # a second failing run does not file it again
    fixed = merge_build(read_back(items), sample_report(False))
    assert fixed[0].done and "passing @2026-11-26T12:00:09Z" in fixed[0].text
    back = merge_build(read_back(fixed), failing)
    assert len(back) == 1 and not back[0].done  # re-opened, not duplicated


def test_write_evidence_keeps_hand_written_text(tmp_path: Path) -> None:
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    write_evidence(sample_report(True), cfg)
    status = tmp_path / "STATUS-pvcheck.md"
    notes = "\n## Operator notes\n\nDrone was scaled down on purpose — ask Ana.\n"
    status.write_text("Intro by hand.\n" + status.read_text() + notes)
    journal_before = (tmp_path / "JOURNAL-pvcheck.md").read_text()
    write_evidence(sample_report(False), cfg)
    text = status.read_text()
    assert text.startswith("Intro by hand.\n") and text.endswith(notes)
    assert "## Gate: M1 — CLAIMED, awaiting Adversary" in text
    assert (tmp_path / "JOURNAL-pvcheck.md").read_text().startswith(journal_before)
    backlog = (tmp_path / "BACKLOG-pvcheck.md").read_text()
    assert backlog.count("`svc.lab-drone_app`") == 1 and "- [x] **B1**" in backlog
