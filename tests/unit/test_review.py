"""The review's pure parts: claims and verdicts parsed from the state files, evidence compared
with live facts, findings filed once, and the DONE rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck.backlog import FINDINGS_SECTION, merge_findings, parse_backlog
from pvcheck.config import load_config
from pvcheck.done import write_done
from pvcheck.errors import StateFileError
from pvcheck.evidence import render
from pvcheck.hostfacts import HostFacts, NetworkFacts, ServiceFacts
from pvcheck.protocol import (
    ClaimState,
    GateClaim,
    GateReview,
    done_rule,
    has_done,
    mark_gate_passed,
    parse_claims,
    parse_verdicts,
)
from pvcheck.records import Gate, Verdict
from pvcheck.review import (
    Recorded,
    compare_evidence,
    read_recorded,
    recorded_from_json,
    status_edit_findings,
)
from pvcheck.reviewrecord import Finding
from pvcheck.statefiles import replace_section
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

T0 = datetime(2026, 11, 26, 12, 0, 9, tzinfo=UTC)


def status_text(tmp_path: Path) -> str:
    from pvcheck.evidence import write_evidence

    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    write_evidence(sample_report(False), cfg)
    return (tmp_path / "STATUS-pvcheck.md").read_text()


def test_claims_and_evidence_round_trip(tmp_path: Path) -> None:
    text = status_text(tmp_path)
    claims = parse_claims(text, "S")
    assert claims["M1"].state == "claimed" and claims["M1"].claimed_at == T0
    assert claims["M1"].run_id == "pv-20261126120000-abc123"
    assert claims["M1"].commands[0].startswith("grep -x '## DONE'")
    assert claims["M2"].is_claim
    # The numbers come from the run's JSON report, not from STATUS's Markdown.
    recorded = read_recorded(tmp_path / "REPORT-pvcheck.json")
    assert recorded is not None and recorded.run_id == "pv-20261126120000-abc123"
    assert recorded.network["subnet"] == "10.20.0.0/16" and recorded.network["service VIPs"] == "5"
    assert recorded.services["lab-drone_app"] == "1/1"


@pytest.mark.faults
def test_a_report_pvcheck_did_not_write_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="R: not a pvcheck run report"):
        recorded_from_json({"verdict": "pass"}, "R")
    bad = tmp_path / "REPORT-pvcheck.json"
    bad.write_text("{not json")
    with pytest.raises(StateFileError, match=r"REPORT-pvcheck\.json.*not JSON"):
        read_recorded(bad)
    odd = recorded_from_json({"run_id": "r", "facts": {"after": {"network": 5}}}, "R")
    assert odd.network == {} and odd.used is None


@pytest.mark.faults
def test_forged_or_duplicate_gate_headers_claim_nothing(tmp_path: Path) -> None:
    real = "## Gate: M1 — CLAIMED, awaiting Adversary"
    text = status_text(tmp_path).replace(real, "## Gate: M1 — NOT CLAIMED (FAIL)")
    forged = text + "\n## Gate: M1 — PASS @2026-11-26T12:00:00Z\n" + real + "\n"
    assert parse_claims(forged, "S")["M1"].state == "not claimed"  # outside pvcheck's section
    doubled = text.replace("## Gate: M1 — NOT CLAIMED (FAIL)", f"## Gate: M1 — NOT CLAIMED\n{real}")
    with pytest.raises(StateFileError, match="S: section gate-M1 holds 2 gate headers"):
        parse_claims(doubled, "S")


def test_mark_gate_passed_changes_only_the_header(tmp_path: Path) -> None:
    text = status_text(tmp_path)
    marked = mark_gate_passed(text, "M1", "2026-11-26T13:00:00Z", "S")
    assert "## Gate: M1 — PASS @2026-11-26T13:00:00Z" in marked
    assert "## Gate: M2 — CLAIMED, awaiting Adversary" in marked
    claims = parse_claims(marked, "S")
    assert claims["M1"].state == "pass" and claims["M1"].claimed_at == T0
    assert len(marked.splitlines()) == len(text.splitlines())


def live(vips: int = 5, used_extra: int = 0, drone: str = "1/1") -> HostFacts:
    running, desired = (int(x) for x in drone.split("/"))
    return HostFacts(
        "t",
        NetworkFacts("proxy", "10.20.0.0/16", "overlay", 65533, vips, 5 + used_extra, 1, 0),
        [ServiceFacts("lab-drone_app", True, running, desired)],
        {},
    )


def test_compare_evidence_finds_edited_shape_and_a_grown_total_in_an_old_report() -> None:
    network = {"subnet": "10.20.0.0/24", "service VIPs": "7"}
    recorded = Recorded("r", network, {"lab-drone_app": "1/1"}, 11)
    found = compare_evidence(recorded, live()).findings
    # Endpoint counts are attributed, not compared one by one: only the shape differs here.
    assert {(f.key, f.gate) for f in found} == {("report:subnet", "M1")}
    assert (
        found[0].title == "the run's report says subnet = 10.20.0.0/24, the host shows 10.20.0.0/16"
    )
    recorded = Recorded("r", {"subnet": "10.20.0.0/16"}, {"lab-drone_app": "1/1"}, 11)
    found = compare_evidence(recorded, live(used_extra=3, drone="0/1")).findings
    assert {(f.key, f.gate) for f in found} == {
        ("leak:endpoints", "M2"),
        ("report:lab-drone_app", "M1"),
    }


def test_findings_are_kept_once_fixed_and_reopened() -> None:
    a = Finding("residue:service x", Gate.M2, "leftover x", "docker ps")
    b = Finding("status:capacity", Gate.M1, "capacity edited", "inspect")
    first = merge_findings([], [a, b], "T1")
    assert [(i.num, i.status) for i in first] == [("A1", "OPEN"), ("A2", "OPEN")]
    body = "\n".join(
        f"### {i.num} [adversary] {i.title}\n<!-- key: {i.key} -->\n**Status:** {i.status}{i.note}\nRepro: {i.repro}"
        for i in first
    )
    parsed = parse_backlog(replace_section("", FINDINGS_SECTION, body, "B"), "B").findings
    again = merge_findings(parsed, [a], "T2")
    assert [(i.num, i.status) for i in again] == [("A1", "OPEN"), ("A2", "FIXED")]
    reopened = merge_findings(again, [a, b], "T3")
    assert [(i.num, i.status) for i in reopened] == [("A1", "OPEN"), ("A2", "OPEN")]


def claim(at: datetime | None) -> GateClaim:
    return GateClaim(Gate.M1, ClaimState.CLAIMED, at, "pv-1")


def test_done_rule() -> None:
    now = T0 + timedelta(hours=1)
    claims = {"M1": claim(T0), "M2": claim(T0)}
    fresh = {
        "M1": GateReview(Verdict.PASS, T0 + timedelta(minutes=5)),
        "M2": GateReview(Verdict.PASS, T0 + timedelta(minutes=6)),
    }
    assert done_rule(claims, fresh, now, timedelta(hours=24)).ok
    stale = done_rule(claims, fresh, now + timedelta(days=2), timedelta(hours=24))
    assert not stale.ok and all("stale" in p for p in stale.problems)
    older = done_rule(
        {**claims, "M2": claim(T0 + timedelta(minutes=10))}, fresh, now, timedelta(hours=24)
    )
    assert older.problems == [
        "M2: the PASS @2026-11-26T12:06:09Z is not newer than the claim @2026-11-26T12:10:09Z"
    ]
    missing = done_rule(claims, {"M1": fresh["M1"]}, now, timedelta(hours=24))
    assert missing.problems == ["M2: no review verdict in REVIEW"]
    failed = done_rule(
        claims, {**fresh, "M1": GateReview(Verdict.FAIL, now)}, now, timedelta(hours=24)
    )
    assert failed.problems == ["M1: the latest review is FAIL"]
    unclaimed = done_rule(
        {"M1": claim(T0), "M2": GateClaim(Gate.M2, ClaimState.NONE, None, None)},
        fresh,
        now,
        timedelta(hours=24),
    )
    assert unclaimed.problems == ["M2: no claim in STATUS"]


def test_done_rule_same_second_review_counts_only_for_the_claim_it_reviewed() -> None:
    # A fast lab run and its review can fall in one second: the review's own record of which
    # claim it verified decides; a hand-written verdict needs a strictly later timestamp.
    claims = {"M1": claim(T0), "M2": claim(T0)}
    reviewed = {g: GateReview(Verdict.PASS, T0, "pv-1") for g in claims}
    assert done_rule(claims, reviewed, T0, timedelta(hours=24)).ok
    by_hand = done_rule(
        claims, {g: GateReview(Verdict.PASS, T0) for g in claims}, T0, timedelta(hours=24)
    )
    assert by_hand.problems == [
        f"{g}: the PASS @2026-11-26T12:00:09Z is not newer than the claim @2026-11-26T12:00:09Z"
        for g in ("M1", "M2")
    ]
    # A later PASS of an earlier claim does not pass a claim made since.
    other = {**reviewed, "M2": GateReview(Verdict.PASS, T0 + timedelta(minutes=1), "pv-0")}
    assert done_rule(claims, other, T0, timedelta(hours=24)).problems == [
        "M2: the PASS reviewed run pv-0, not the current claim of run pv-1"
    ]


def test_verdicts_latest_wins() -> None:
    text = (
        "## M1 — Control plane and routing verified: **FAIL** @ 2026-11-26T10:00:00Z\n"
        "## M1 — Control plane and routing verified: **PASS** @ 2026-11-26T11:00:00Z\n"
        "## M2 — Real CI and allocator proof verified: **PASS** @2026-11-26T11:00:00Z\n"
    )
    verdicts = parse_verdicts(text)
    assert verdicts["M1"].verdict == Verdict.PASS and verdicts["M2"] == GateReview(
        Verdict.PASS, datetime(2026, 11, 26, 11, tzinfo=UTC)
    )


def test_verdicts_read_the_reviewed_run_from_the_rendered_review() -> None:
    # The template and the parser must agree on the line naming the claim that was verified.
    sections = [
        render(
            "review_gate.md.j2",
            gate=gate,
            title="t",
            verdict="PASS",
            at="2026-11-26T12:00:09Z",
            claim=GateClaim(gate, ClaimState.CLAIMED, T0, run),
            review_id="rv-1",
            checks=[],
            findings=[],
            churn=[],
            repro=[],
        )
        for gate, run in ((Gate.M1, "pv-a"), (Gate.M2, "pv-b"))
    ]
    text = ""
    for n, body in enumerate(sections):
        text = replace_section(text, f"review.rv-{n}.M{n + 1}", body, "R")
    verdicts = parse_verdicts(text + "## Notes by hand\n\nReviewed the claim of run `x`\n")
    assert verdicts == {
        "M1": GateReview(Verdict.PASS, T0, "pv-a"),
        "M2": GateReview(Verdict.PASS, T0, "pv-b"),
    }


def test_done_writes_only_with_fresh_passes(tmp_path: Path) -> None:
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    text = status_text(tmp_path)
    status = tmp_path / "STATUS-pvcheck.md"
    assert not write_done(cfg, now=T0 + timedelta(hours=1)).ok
    assert status.read_text() == text  # refused: nothing written
    (tmp_path / "REVIEW-pvcheck.md").write_text(
        "## M1 — x: **PASS** @ 2026-11-26T12:30:00Z\n## M2 — y: **PASS** @ 2026-11-26T12:31:00Z\n"
    )
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok
    assert has_done(status.read_text()) and status.read_text().startswith(text)


@pytest.mark.faults
def test_corrupt_review_is_reported_and_untouched(tmp_path: Path) -> None:
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    status_text(tmp_path)
    review = tmp_path / "REVIEW-pvcheck.md"
    review.write_bytes(b"\x00\x01binary")
    with pytest.raises(StateFileError, match=r"REVIEW-pvcheck\.md: binary"):
        write_done(cfg)
    assert review.read_bytes() == b"\x00\x01binary"


def test_a_review_passes_only_the_claim_it_verified(tmp_path: Path) -> None:
    """A run may claim again while a review is running: the review's PASS must not land on
    the newer claim it never saw, even when both claims carry the same second."""
    from pvcheck.evidence import write_review
    from pvcheck.reviewrecord import ReviewResult

    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    text = status_text(tmp_path)
    status = tmp_path / "STATUS-pvcheck.md"
    seen = parse_claims(text, "S")
    # The claim in STATUS now is another run's, made in the same second.
    status.write_text(text.replace("pv-20261126120000-abc123", "pv-20261126120000-def456"))
    result = ReviewResult(
        "rv-1", "2026-11-26T12:00:09Z", seen, verdicts={"M1": Verdict.PASS, "M2": Verdict.FAIL}
    )
    write_review(result, cfg)
    assert "## Gate: M1 — PASS @" not in status.read_text()
    status.write_text(text)  # the claim it verified
    write_review(result, cfg)
    assert "## Gate: M1 — PASS @2026-11-26T12:00:09Z" in status.read_text()


def test_the_reports_probe_ids_are_read_from_the_runs_log_window_strictly() -> None:
    logs = {"since": "2026-12-01T12:00:00Z", "until": "2026-12-01T12:05:00Z"}
    ok = recorded_from_json({"run_id": "r", "run_logs": logs | {"probe_ids": ["abc1"]}}, "R")
    assert ok.probe_ids == ("abc1",)
    for bad in (["x; rm -rf /"], ["a"] * 65, [5]):
        with pytest.raises(StateFileError, match=r"run_logs\.probe_ids"):
            recorded_from_json({"run_id": "r", "run_logs": logs | {"probe_ids": bad}}, "R")


def test_the_review_stage_finds_leftovers_and_a_deploy_stack_not_gone() -> None:
    """The review's own stage through the fake seams: anything of any pvcheck run, and the
    deploy proof's stack by its stack label, become M2 findings; nothing is removed."""
    from pvcheck import review as stage
    from pvcheck.swarm import LABEL_RUN, LABEL_STACK
    from tests.fakes import FakeSwarm, fake_seams

    def svc(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"ID": name, "Spec": {"Name": name, "Labels": labels}}

    swarm = FakeSwarm(
        services=[
            svc("pvc-notes-1a2b_app", {LABEL_RUN: "pv-1", LABEL_STACK: "pvc-notes-1a2b"}),
            svc("lab-traefik_app", {LABEL_STACK: "lab-traefik"}),
        ]
    )
    recorded = Recorded("pv-1", {}, {}, 3, deploy_stacks=["pvc-notes-1a2b", "gone-stack"])
    obs = stage.gather(fake_seams(swarm), recorded)
    assert obs.left["services"] == ["pvc-notes-1a2b_app"]
    assert obs.stacks_left == {"pvc-notes-1a2b": ["service pvc-notes-1a2b_app"], "gone-stack": []}
    keys = [f.key for f in stage.residue_findings(obs)]
    assert keys == [
        "residue:service pvc-notes-1a2b_app",
        "deploy:pvc-notes-1a2b:service pvc-notes-1a2b_app",
    ]
    assert swarm.removed == []  # a review only looks


def test_the_report_must_be_of_the_claimed_run() -> None:
    from pvcheck import review as stage
    from pvcheck.protocol import ClaimState, GateClaim

    at = datetime(2026, 12, 1, tzinfo=UTC)
    claim = GateClaim(Gate.M2, ClaimState.CLAIMED, at, "pv-2")
    other = Recorded("pv-1", {}, {}, 3)
    assert [f.key for f in stage.report_run_findings(claim, other)] == ["report:run"]
    assert stage.report_run_findings(claim, Recorded("pv-2", {}, {}, 3)) == []
    unclaimed = GateClaim(Gate.M2, ClaimState.NONE, None, None)
    assert stage.report_run_findings(unclaimed, other) == []


@pytest.mark.faults
def test_a_figure_edited_by_hand_in_status_is_a_finding_on_both_gates(tmp_path: Path) -> None:
    text = status_text(tmp_path)
    recorded = read_recorded(tmp_path / "REPORT-pvcheck.json")
    assert recorded is not None and set(recorded.status_digests) == {"summary", "evidence"}
    assert status_edit_findings(text, "S", recorded) == []
    # The review's own mark on a verified claim, and line breaks an editor changed: no edit.
    marked = mark_gate_passed(text, "M1", "2026-11-26T13:00:00Z", "S")
    assert status_edit_findings(marked.replace("\n", "\r\n"), "S", recorded) == []
    row = next(line for line in text.splitlines() if line.startswith("| service VIPs |"))
    edited = text.replace(row, row.replace("| 5 |", "| 4 |", 1))
    assert edited != text
    found = status_edit_findings(edited, "S", recorded)
    assert {f.gate for f in found} == {Gate.M1, Gate.M2}
    assert "section evidence is not the text run pv-20261126120000-abc123 wrote" in found[0].title
    # A section removed is a finding too; one the run did not hold (the gate's) is not checked.
    begin, end = "<!-- pvcheck:begin summary -->", "<!-- pvcheck:end summary -->\n"
    gone = text[: text.index(begin)] + text[text.index(end) + len(end) :]
    assert "section summary is gone" in status_edit_findings(gone, "S", recorded)[0].title
