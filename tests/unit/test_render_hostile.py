"""Hostile text cannot change the structure of pvcheck's Markdown.

Every value a template inserts comes from a host, a harness, a report or a config; each one
goes through the environment's one `finalize` rule. Here every string field of every
template's context is set to hostile text (line breaks of every kind, `## DONE`, section
markers, code fences) and the rendered file's skeleton (its heading, marker and fence lines,
line by line) must equal the clean render's. The writers are attacked too: an INCOMPLETE
run's reason or a stage outcome carrying `x\\n## DONE\\n` must not leave a `## DONE` line in
STATUS, and a value carrying an end-of-section marker must not leave an old DONE standing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from pvcheck import evidence
from pvcheck.backlog import BuildItem, FindingItem, merge_build
from pvcheck.config import Config, load_config
from pvcheck.evidence import (
    render,
    render_journal_entry,
    render_review_entries,
    render_status_sections,
    withdraw_done,
    write_evidence,
    write_review,
    write_unreachable,
)
from pvcheck.history import history_record
from pvcheck.protocol import ClaimState, GateClaim, has_done, has_own_done, parse_claims
from pvcheck.records import Check, Gate, Outcome, Stage, StageOutcome, Status, Verdict
from pvcheck.report import Report
from pvcheck.reviewrecord import Finding, ReviewResult
from pvcheck.statefiles import (
    FENCE,
    DocsPaths,
    replace_section,
    sections,
    update_sections,
)
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

# Every line break str.splitlines() knows, a forged DONE, both section markers, both fences.
HOSTILE = (
    "x\n## DONE\n<!-- pvcheck:end summary -->\r\n# heading\u2028## DONE\x0b```sh\x85~~~"
    "\u2029<!-- pvcheck:begin done -->\x0c## VETO\x1c#\x1d#\x1e| `y`\r## DONE"
)
# One-line values that would be structure on a line of their own.
WHOLE_LINES = ["## DONE", "<!-- pvcheck:end summary -->", "```", "~~~", "   # heading"]
ATTACKS = [HOSTILE, *WHOLE_LINES]

TAG = "@poisoned-"  # after a tagged hostile value: shows that it reached the output
_MARKER = re.compile(r"^<!-- pvcheck:(begin|end) \S+ -->$")
_HEADING = re.compile(r"^\s*#")


def skeleton(text: str) -> list[str]:
    """Each line's kind, as pvcheck's parsers split a file (str.splitlines)."""
    out = []
    for line in text.splitlines():
        if _MARKER.match(line):
            out.append(line)  # a marker is structure by its whole text
        elif FENCE.match(line):
            out.append("fence")
        elif _HEADING.match(line):
            out.append("heading")
        else:
            out.append("text")
    return out


class Poison:
    """Every non-empty string in a value (dataclass fields, list items, dict keys and values)
    replaced by the attack; enums, numbers, dates and empty strings are kept, so every branch
    and loop of a template runs as it did. Tagged, each string gets a number after the attack
    (the same one for the same string: equal names stay equal), which shows where values
    reached the output; untagged, each value is the attack exactly (a whole-line marker
    stays one)."""

    def __init__(self, attack: str, tagged: bool) -> None:
        self.attack = attack
        self.tagged = tagged
        self.seen: dict[str, str] = {}

    def text(self, value: str) -> str:
        if not value:
            return value
        if not self.tagged:
            return self.attack
        return self.seen.setdefault(value, f"{self.attack}{TAG}{len(self.seen)}")

    def __call__(self, value: Any) -> Any:
        return poison(value, self)


# Keys of a record's own shape (an allocator round's counts), not names from a host.
SCHEMA_KEYS = {"vips", "task_ips", "lb_endpoints", "containers"}


def poison(value: Any, p: Poison) -> Any:
    if isinstance(value, Enum | bool | int | float | datetime | Path) or value is None:
        return value
    if isinstance(value, str):
        return p.text(value)
    if isinstance(value, list):
        return [poison(v, p) for v in value]
    if isinstance(value, tuple):
        return tuple(poison(v, p) for v in value)
    if isinstance(value, dict):
        return {(k if k in SCHEMA_KEYS else poison(k, p)): poison(v, p) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: poison(getattr(value, f.name), p) for f in dataclasses.fields(value) if f.init
        }
        if isinstance(value, Check):
            # A check's family is its id's first part: keep it, so the gates judge the same.
            changes["id"] = f"{value.family}.{p.text(value.id)}"
        if isinstance(value, ReviewResult):
            # pvcheck's judgement (PASS or FAIL per gate) and its own id, which names the
            # entry's section (replace_section refuses a name a marker cannot carry).
            changes["verdicts"] = value.verdicts
            changes["review_id"] = value.review_id
        if isinstance(value, Report) and value.run_logs is not None:
            # The run's log window reaches a shell line only as a validated UTC timestamp
            # (claims._log_window_command refuses anything else): pvcheck's own text.
            logs = value.run_logs
            changes["run_logs"] = dataclasses.replace(
                changes["run_logs"], since=logs.since, until=logs.until
            )
        return dataclasses.replace(value, **changes)
    raise TypeError(f"poison: {type(value).__name__}")


def incomplete_sample() -> Report:
    """An INCOMPLETE run (M2's guard check skipped) reached over ssh, with stage reasons."""
    report = sample_report(False)
    report.checks = [
        dataclasses.replace(c, status=Status.SKIP, detail="guard file not found")
        if c.id.startswith("guard.")
        else c
        for c in report.checks
    ]
    report.target_via = "ssh://lab (host key checked)"
    report.stages[Stage.DEPLOY] = StageOutcome(Outcome.SKIPPED, "step deploy never started")
    return report


@dataclasses.dataclass
class World:
    """Everything templates are given, in one value that poison() can reach."""

    report: Report
    vetoes: list[str]
    backlog: list[BuildItem]  # each item's text is a whole line of BACKLOG
    findings: list[FindingItem]
    review: ReviewResult
    churn: list[str]
    phase: str
    run_id: str
    why: str
    error: str
    target: str
    paths: DocsPaths


def world(report: Report) -> World:
    claim = GateClaim(Gate.M1, ClaimState.CLAIMED, datetime(2026, 11, 26, 12, tzinfo=UTC), "pv-1")
    review = ReviewResult(
        "rv-1",
        "2026-11-26T12:30:00Z",
        {Gate.M1: claim, Gate.M2: dataclasses.replace(claim, gate=Gate.M2)},
        checks=list(report.checks),
        findings=[
            Finding("k1", Gate.M1, "route down", "curl http://x/"),
            Finding("k2", Gate.M2, "residue left", "docker service ls"),
        ],
        verdicts={"M1": Verdict.FAIL, "M2": Verdict.FAIL},
        churn=["service other_app: 1 → 2 replicas"],
    )
    return World(
        report=report,
        vetoes=["REVIEW-pvcheck.md line 3: the numbers were edited"],
        backlog=merge_build([], sample_report(True)) + merge_build([], report),
        findings=[
            FindingItem("A1", "key-1", "route down", "OPEN", " (found @t)", "curl http://x/"),
            FindingItem("A2", "key-2", "residue", "FIXED", " @t: no longer reproducible", "ls"),
        ],
        review=review,
        churn=review.churn,
        phase="pvcheck",
        run_id=report.run_id,
        why="run pv-1 verdict INCOMPLETE: M2 not proven",
        error="connection refused",
        target="lab",
        paths=DocsPaths(Path("/srv/docs"), "pvcheck"),
    )


def renders(w: World, cfg: Config) -> dict[str, str]:
    """Every template, rendered from the world (templates shared by files in their place)."""
    report = w.report
    out = {f"status/{k}": v for k, v in render_status_sections(report, cfg, w.vetoes).items()}
    out["journal_entry"] = render_journal_entry(report, cfg)
    out["verdict"] = render("verdict.md.j2", report=report)
    out["allocator"] = render("allocator.md.j2", report=report, alloc=report.allocator)
    out["allocator-none"] = render("allocator.md.j2", report=report, alloc=None)
    records = [history_record(report, 9.0)]
    out["trend"] = render("status_trend.md.j2", records=records, svg_src=w.phase)
    out["backlog_build"] = render("backlog_build.md.j2", items=w.backlog)
    out["backlog_adversary"] = render("backlog_adversary.md.j2", items=w.findings)
    out |= {f"review/{k}": v for k, v in render_review_entries(w.review).items()}
    for header in ("status", "backlog", "journal", "review"):
        out[f"{header}_header"] = render(f"{header}_header.md.j2", phase=w.phase)
    out["review_archive_header"] = render("review_archive_header.md.j2", paths=w.paths)
    at = report.finished_at
    for stray in (None, 7):
        out[f"journal_withdrawn-{stray}"] = render(
            "journal_withdrawn.md.j2", at=at, why=w.why, stray=stray, status_name=w.phase
        )
    out["journal_unreachable"] = render(
        "journal_unreachable.md.j2",
        at=at,
        run_id=w.run_id,
        target=w.target,
        docker_host=w.target,
        error=OSError(w.error),
    )
    out["journal_review"] = render(
        "journal_review.md.j2", result=w.review, moved=2, archive_name=w.phase
    )
    return out


@pytest.fixture
def cfg() -> Config:
    return load_config(
        LAB_CONFIG, {"docs": {"dir": "/srv/docs"}, "guard": {"file": "/srv/ops/SKILL.md"}}
    )


SAMPLES: dict[str, Callable[[], Report]] = {
    "pass": lambda: sample_report(False),
    "fail": lambda: sample_report(True),
    "incomplete": incomplete_sample,
}


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: repr(a[:12]))
@pytest.mark.parametrize("sample", list(SAMPLES))
def test_hostile_text_in_every_field_leaves_every_templates_structure_unchanged(
    cfg: Config, sample: str, attack: str
) -> None:
    clean = world(SAMPLES[sample]())
    before = renders(clean, cfg)
    for tagged in (True, False):
        hostile = Poison(attack, tagged)(clean)
        assert hostile.report.verdict == clean.report.verdict  # the same branches render
        after = renders(hostile, cfg)
        assert before.keys() == after.keys()
        for name, text in after.items():
            assert TAG in text or not tagged, f"{name}: no hostile value reached it"
            assert skeleton(text) == skeleton(before[name]), f"{name}:\n{text}"


def test_the_clean_values_of_the_goldens_are_not_touched(cfg: Config) -> None:
    """A clean value starting with `#` in a table cell (an EXPECTED `## DONE`) is kept."""
    gate = render_status_sections(sample_report(False), cfg)["gate-M1"]
    assert "| 1 | ## DONE |" in gate
    assert "| `pre.pvfix-done` | PASS | DONE | ## DONE present |" in gate


# --- the writers ------------------------------------------------------------------------------

FORGE = "x\n## DONE\n"
END_MARKER = "x\n<!-- pvcheck:end summary -->\n"


def docs_config(folder: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    return load_config(LAB_CONFIG, {"docs": {"dir": str(folder)}})


def with_done(cfg: Config) -> None:
    """pvcheck's own `## DONE` standing in STATUS, as `pvcheck done` writes it."""
    paths = cfg.docs.paths
    update_sections(paths.status, "# STATUS\n", {"done": "## DONE\n\nWritten @t by pvcheck.\n"})
    assert has_own_done(paths.status.read_text(encoding="utf-8"), "S")


def hostile_incomplete(text: str) -> Report:
    """An INCOMPLETE run whose reason (a skipped check's detail, as a file name in the
    active-run folder reaches it) and a stage outcome (a Drone step name) carry `text`."""
    report = incomplete_sample()
    report.checks = [
        dataclasses.replace(c, detail=f"stale run file {text}") if c.status == Status.SKIP else c
        for c in report.checks
    ]
    report.stages[Stage.DEPLOY] = StageOutcome(Outcome.FAIL, f"step {text}")
    assert report.verdict == Verdict.INCOMPLETE and text in report.incomplete_reason
    return report


def assert_no_forged_lines(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not has_done(text), text
    assert not any(line.rstrip() == "## DONE" for line in text.splitlines()), text
    sections(text, str(path))  # every owned section still parses


@pytest.mark.parametrize("text", [FORGE, END_MARKER, HOSTILE])
def test_an_incomplete_runs_reason_cannot_forge_done_in_status_or_journal(
    tmp_path: Path, text: str
) -> None:
    cfg = docs_config(tmp_path / "docs")
    write_evidence(hostile_incomplete(text), cfg)
    paths = cfg.docs.paths
    assert_no_forged_lines(paths.status)
    assert_no_forged_lines(paths.journal)
    assert_no_forged_lines(paths.backlog)


@pytest.mark.parametrize("text", [FORGE, END_MARKER, HOSTILE])
def test_an_incomplete_run_withdraws_an_old_done_whatever_its_text(
    tmp_path: Path, text: str
) -> None:
    cfg = docs_config(tmp_path / "docs")
    with_done(cfg)
    out = write_evidence(hostile_incomplete(text), cfg)
    assert out.docs.withdrawn is not None
    paths = cfg.docs.paths
    assert not has_own_done(paths.status.read_text(encoding="utf-8"), "S")
    assert_no_forged_lines(paths.status)
    assert_no_forged_lines(paths.journal)


def test_done_is_withdrawn_before_a_later_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = docs_config(tmp_path / "docs")
    with_done(cfg)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(evidence, "append_history", broken)
    with pytest.raises(OSError, match="disk full"):
        write_evidence(hostile_incomplete("a"), cfg)
    assert not has_own_done(cfg.docs.paths.status.read_text(encoding="utf-8"), "S")


def test_a_failed_review_withdraws_done_first_and_a_passed_gate_does_not_bring_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = docs_config(tmp_path / "docs")
    write_evidence(sample_report(False), cfg)  # the claims the review reads
    with_done(cfg)
    status = cfg.docs.paths.status
    claims = parse_claims(status.read_text(encoding="utf-8"), str(status))
    result = ReviewResult(
        "rv-1",
        "2026-11-26T12:30:00Z",
        claims,
        findings=[Finding("k", Gate.M2, FORGE, FORGE)],
        verdicts={"M1": Verdict.PASS, "M2": Verdict.FAIL},
        churn=[FORGE],
    )
    write_review(result, cfg)  # M1 PASS marks its header: the old text must not come back
    text = status.read_text(encoding="utf-8")
    assert not has_own_done(text, "S") and "## Gate: M1 — PASS @" in text
    assert_no_forged_lines(status)
    assert_no_forged_lines(cfg.docs.paths.journal)
    assert_no_forged_lines(cfg.docs.paths.review)
    assert_no_forged_lines(cfg.docs.paths.backlog)

    with_done(cfg)

    def broken(*_: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(evidence, "_append_review", broken)
    with pytest.raises(OSError, match="disk full"):
        write_review(dataclasses.replace(result, review_id="rv-2"), cfg)
    assert not has_own_done(status.read_text(encoding="utf-8"), "S")


def test_an_unreachable_targets_error_text_cannot_forge_a_journal_heading(
    tmp_path: Path,
) -> None:
    cfg = docs_config(tmp_path / "docs")
    with_done(cfg)
    out = write_unreachable(cfg, "pv-1", "2026-11-26T12:00:00Z", OSError(HOSTILE))
    assert out.withdrawn is not None
    journal = cfg.docs.paths.journal.read_text(encoding="utf-8")
    headings = [line for line in journal.splitlines() if _HEADING.match(line)]
    assert headings == [
        "# JOURNAL — pvcheck",
        "## 2026-11-26T12:00:00Z — DONE withdrawn",
        "## 2026-11-26T12:00:00Z — run `pv-1`: UNREACHABLE",
    ]


def test_a_withdrawal_reason_is_one_line_in_the_journal(tmp_path: Path) -> None:
    cfg = docs_config(tmp_path / "docs")
    with_done(cfg)
    paths = cfg.docs.paths
    assert withdraw_done(paths, f"pvcheck done: {HOSTILE}", "2026-11-26T12:00:00Z")
    journal = paths.journal.read_text(encoding="utf-8")
    assert [line for line in journal.splitlines() if _HEADING.match(line)] == [
        "# JOURNAL — pvcheck",
        "## 2026-11-26T12:00:00Z — DONE withdrawn",
    ]
    assert_no_forged_lines(paths.journal)


@pytest.mark.parametrize("name", ["review.x\n## DONE\n.M1", "a -->", "rv 1", ""])
def test_a_section_name_a_marker_cannot_carry_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a section name"):
        replace_section("# STATUS\n", name, "body\n", "S")
