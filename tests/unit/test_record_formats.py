"""The state files as cc-ci's record writes them: DONE headings with trailing text, verdicts in
every form the Adversary uses, whoever wrote them, and `pvcheck done` refusing over a later FAIL.

Fixtures in tests/golden/record/ are written in our own words in the record's forms; each cites
its source at the top. The record: recipe-maintainers/cc-ci on git.autonomic.zone,
machine-docs/STATUS.md @45afccb (`## DONE — 2026-05-27`), STATUS-lvl5.md @caef217 (`## DONE`
and prose), REVIEW-lvl5.md @caef217 and commit 13cad1f (`## M2 — …: **PASS** @ 2026-06-11T11:27Z`),
REVIEW-pvcheck.md @935b6ae, and the Adversary's prompt in recipe-maintainers/agent-orchestrator
@a0f7652 (`<id>: PASS @<ts>`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck import preconditions
from pvcheck.config import Config, load_config
from pvcheck.done import write_done
from pvcheck.evidence import write_evidence, write_review
from pvcheck.protocol import (
    GateReview,
    done_rule,
    has_done,
    has_own_done,
    is_done_heading,
    parse_claims,
    parse_record_ts,
    parse_verdicts,
    read_verdicts,
    stray_done_lines,
)
from pvcheck.records import Status, Verdict
from pvcheck.reviewrecord import ReviewResult
from tests.fakes import FakeSwarm, fake_seams
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

RECORD = Path(__file__).parent.parent / "golden" / "record"
T0 = datetime(2026, 11, 26, 12, 0, 9, tzinfo=UTC)  # the sample report's claim
DAY = timedelta(hours=24)


def record(name: str) -> str:
    return (RECORD / name).read_text(encoding="utf-8")


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 11, 26, hh, mm, ss, tzinfo=UTC)


# --- 1. DONE as the record writes it -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "done"),
    [
        ("STATUS-pvfix-dated.md", True),  # `## DONE — 2026-06-13`
        ("STATUS-pvfix-prose.md", True),  # `## DONE`, prose on the next line
        ("STATUS-pvfix-claimed.md", False),  # only in a code block, mid-line, `### DONE …`
    ],
)
def test_a_phase_is_done_when_a_done_heading_stands_in_the_records_forms(
    name: str, done: bool
) -> None:
    assert has_done(record(name)) is done


@pytest.mark.parametrize(
    "line",
    ["## DONE", "## DONE — 2026-05-27", "## DONE  ", "## DONE\t(phase complete)"],
)
def test_a_done_heading_may_carry_text_after_a_space(line: str) -> None:
    assert is_done_heading(line) and has_done(f"# STATUS\n\n{line}\n\nprose\n")


@pytest.mark.parametrize(
    "line",
    [
        "## DONEX",
        "## DONE-ish",
        "## DONE:",  # no space after DONE: a different word
        "### DONE",
        "# DONE",
        " ## DONE",  # indented: not at the start of the line
        "## Done",
        "Gate: ## DONE",
        "- [ ] then ## DONE after a fresh PASS",
    ],
)
def test_only_a_level_two_done_heading_counts(line: str) -> None:
    assert not is_done_heading(line) and not has_done(f"# STATUS\n\n{line}\n")


def test_a_done_heading_in_any_code_fence_does_not_count() -> None:
    for fence in ("```", "~~~", "```markdown"):
        assert not has_done(f"# STATUS\n\n{fence}\n## DONE — 2026-05-27\n{fence[:3]}\n")


def run_preconditions(tmp_path: Path, text: str | None) -> Any:
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    settings = preconditions.Settings.from_config(cfg)
    settings.status_file.parent.mkdir(parents=True, exist_ok=True)
    if text is not None:
        settings.status_file.write_text(text, encoding="utf-8")
    obs = preconditions.gather(fake_seams(FakeSwarm(inspect={"Name": "other"})), settings)
    return preconditions.judge(obs, settings)[0]


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("STATUS-pvfix-dated.md", Status.PASS),
        ("STATUS-pvfix-prose.md", Status.PASS),
        ("STATUS-pvfix-claimed.md", Status.FAIL),
    ],
)
def test_the_precondition_reads_the_precondition_phases_status_in_the_records_forms(
    tmp_path: Path, name: str, status: Status
) -> None:
    check = run_preconditions(tmp_path, record(name))
    assert check.status == status, check


def test_pvchecks_own_done_is_told_apart_from_a_persons_dated_done(tmp_path: Path) -> None:
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    write_evidence(sample_report(False), cfg)
    status = cfg.docs.paths.status
    by_hand = status.read_text(encoding="utf-8") + "\n## DONE — 2026-11-26\n\nWritten by hand.\n"
    status.write_text(by_hand, encoding="utf-8")
    assert has_done(by_hand) and not has_own_done(by_hand, str(status))
    assert stray_done_lines(by_hand, str(status)) == [len(by_hand.splitlines()) - 2]


# --- 2. verdicts in every form of the record -----------------------------------------------------


def test_the_records_review_is_read_whoever_wrote_it() -> None:
    reading = read_verdicts(record("REVIEW-pvcheck.md"), "REVIEW-pvcheck.md")
    # The short lines at the end are the newest of each gate; the baseline probe heading and
    # the verdicts quoted inside the command-evidence block are not verdicts.
    assert reading.verdicts == {
        "M1": GateReview(Verdict.PASS, at(12, 57), None),
        "M2": GateReview(Verdict.FAIL, at(12, 58), None),
    }
    assert reading.unread == []


@pytest.mark.parametrize(
    ("line", "verdict", "when"),
    [
        ("## M1 — Control plane: **PASS** @ 2026-06-11T07:54Z", Verdict.PASS, (7, 54, 0)),
        ("## M1 — Control plane: **FAIL** @2026-06-11T07:54Z", Verdict.FAIL, (7, 54, 0)),
        ("## M1 — Control plane: **PASS** @2026-06-11T07:54:31Z", Verdict.PASS, (7, 54, 31)),
        ("## M1 — A: b (c): **FAIL** @ 2026-06-11T07:54Z re-run", Verdict.FAIL, (7, 54, 0)),
        ("### M1 — Control plane: **FAIL** @ 2026-06-11T07:54Z", Verdict.FAIL, (7, 54, 0)),
        ("M1: FAIL @2026-06-11T07:54Z", Verdict.FAIL, (7, 54, 0)),
        ("M1: PASS @ 2026-06-11T07:54Z", Verdict.PASS, (7, 54, 0)),
        ("M1: FAIL @2026-06-11T07:54:02Z — three endpoints leaked", Verdict.FAIL, (7, 54, 2)),
        ("- M1: FAIL @2026-06-11T07:54Z", Verdict.FAIL, (7, 54, 0)),
    ],
)
def test_each_verdict_form_is_read(line: str, verdict: Verdict, when: tuple[int, int, int]) -> None:
    expected = datetime(2026, 6, 11, *when, tzinfo=UTC)
    assert parse_verdicts(f"# REVIEW\n\n{line}\n") == {"M1": GateReview(verdict, expected)}


@pytest.mark.parametrize(
    "line",
    [
        "## Adversary baseline probe — 2026-06-13T05:56Z",
        "#### M1 — too deep: **FAIL** @ 2026-06-11T07:54Z",
        "## M1 — no bold: FAIL @ 2026-06-11T07:54Z",
        "M1 FAIL @2026-06-11T07:54Z",  # a commit subject's shape, not REVIEW's
        "Phase complete: M1 PASS (cfc87fd) + M2 PASS (13cad1f)",
        "| M1 | PASS | @05:40Z |",
        "review(pvcheck-M1): M1 PASS — routes green",
    ],
)
def test_lines_that_are_not_verdicts(line: str) -> None:
    reading = read_verdicts(f"# REVIEW\n\n{line}\n")
    assert reading.verdicts == {} and reading.unread == []


def test_the_newest_verdict_by_timestamp_wins_not_the_last_in_the_file() -> None:
    text = (
        "## M1 — t: **FAIL** @ 2026-11-26T12:50Z\n"  # newer, earlier in the file
        "M1: PASS @2026-11-26T12:40:59Z\n"
    )
    assert parse_verdicts(text)["M1"] == GateReview(Verdict.FAIL, at(12, 50))


@pytest.mark.parametrize(("first", "second"), [("PASS", "FAIL"), ("FAIL", "PASS")])
def test_of_two_verdicts_at_the_same_time_the_later_in_the_file_wins(
    first: str, second: str
) -> None:
    # The minute form and the second form name the same instant.
    text = f"## M1 — t: **{first}** @2026-11-26T12:30:00Z\nM1: {second} @ 2026-11-26T12:30Z\n"
    assert parse_verdicts(text)["M1"].verdict == Verdict(second.lower())


@pytest.mark.parametrize(
    ("stamp", "said"),
    [
        ("2026-11-26", "timestamp '2026-11-26'"),  # a date alone, as REVIEW-1e writes it
        ("2026-11-26T12:50", "timestamp '2026-11-26T12:50'"),  # no Z
        ("2026-11-26T12:50+01:00", "timestamp '2026-11-26T12:50+01:00'"),
        ("2026-11-26 12:50Z", "timestamp '2026-11-26'"),
        ("2026-13-26T12:50Z", "timestamp '2026-13-26T12:50Z'"),
        ("a521d43", "timestamp 'a521d43'"),  # a commit, as the review commits write `@`
        ("", "no timestamp"),
    ],
)
def test_a_verdict_with_an_unreadable_timestamp_is_not_a_verdict_and_is_named(
    stamp: str, said: str
) -> None:
    assert parse_record_ts(stamp) is None
    text = f"# REVIEW\n\n## M1 — t: **FAIL** @ {stamp}\n"
    reading = read_verdicts(text, "REVIEW-pvcheck.md")
    assert reading.verdicts == {}
    (unread,) = reading.unread
    assert (unread.gate, unread.verdict, unread.line, unread.superseded) == (
        "M1",
        Verdict.FAIL,
        3,
        False,
    )
    assert unread.reason.startswith(f"M1: REVIEW-pvcheck.md line 3: a FAIL with {said} ")
    assert "is not read as a verdict" in unread.reason


def test_a_verdict_heading_without_any_timestamp_is_named_too() -> None:
    (unread,) = read_verdicts("## M2 — t: **FAIL**\n").unread
    assert (unread.gate, unread.stamp) == ("M2", "")


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-06-11T07:54Z", datetime(2026, 6, 11, 7, 54, tzinfo=UTC)),
        ("2026-06-11T07:54:09Z", datetime(2026, 6, 11, 7, 54, 9, tzinfo=UTC)),
        ("2026-06-11T07:54:09.5Z", None),
        ("2026-06-11t07:54Z", None),
        (" 2026-06-11T07:54Z", None),
    ],
)
def test_record_timestamps(stamp: str, expected: datetime | None) -> None:
    assert parse_record_ts(stamp) == expected


# --- 3. `pvcheck done` never writes over a later FAIL ------------------------------------------


def docs(folder: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(folder)}})
    write_evidence(sample_report(False), cfg)  # claims M1 and M2 @2026-11-26T12:00:09Z
    return cfg


def pvcheck_passes(cfg: Config, when: str = "2026-11-26T12:30:00Z") -> None:
    """pvcheck's own review: PASS on both gates (its own entries in REVIEW)."""
    status = cfg.docs.paths.status
    claims = parse_claims(status.read_text(encoding="utf-8"), str(status))
    verdicts = {"M1": Verdict.PASS, "M2": Verdict.PASS}
    write_review(ReviewResult("rv-pass", when, claims, verdicts=verdicts), cfg)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")


def test_done_refuses_over_the_adversarys_later_fail_in_the_records_review(
    tmp_path: Path,
) -> None:
    cfg = docs(tmp_path / "docs")
    paths = cfg.docs.paths
    pvcheck_passes(cfg)
    assert parse_verdicts(paths.review.read_text(encoding="utf-8"))["M2"].verdict == Verdict.PASS
    append(paths.review, record("REVIEW-pvcheck.md"))
    before = paths.status.read_bytes()
    result = write_done(cfg, now=T0 + timedelta(hours=1))
    assert not result.ok
    assert result.problems == ["M2: the latest review is FAIL"]
    assert paths.status.read_bytes() == before
    assert not has_done(paths.status.read_text(encoding="utf-8"))


def test_the_adversarys_passes_in_the_records_form_let_done_write(tmp_path: Path) -> None:
    cfg = docs(tmp_path / "docs")
    paths = cfg.docs.paths
    text = record("REVIEW-pvcheck.md")
    passes_only = text[: text.index("## M2 — Real CI and allocator proof re-checked")]
    paths.review.write_text(passes_only, encoding="utf-8")  # nothing written by pvcheck
    result = write_done(cfg, now=T0 + timedelta(hours=1))
    assert result.ok, result.problems
    assert has_own_done(paths.status.read_text(encoding="utf-8"), str(paths.status))


@pytest.mark.parametrize(
    "fail",
    [
        "## M2 — Real CI and allocator proof verified: **FAIL** @ 2026-11-26T12:45Z\n",
        "## M2 — Real CI and allocator proof verified: **FAIL** @2026-11-26T12:45Z\n",
        "M2: FAIL @2026-11-26T12:45Z\n",
        "M2: FAIL @ 2026-11-26T12:45Z — leaked endpoints, repro below\n",
        # the same instant as pvcheck's PASS, later in the file
        "M2: FAIL @2026-11-26T12:30Z\n",
    ],
)
def test_a_fail_after_pvchecks_pass_blocks_done_in_every_form(tmp_path: Path, fail: str) -> None:
    cfg = docs(tmp_path / "docs")
    pvcheck_passes(cfg)
    append(cfg.docs.paths.review, fail)
    result = write_done(cfg, now=T0 + timedelta(hours=1))
    assert not result.ok and result.problems == ["M2: the latest review is FAIL"]


def test_a_later_fail_withdraws_a_standing_done(tmp_path: Path) -> None:
    cfg = docs(tmp_path / "docs")
    paths = cfg.docs.paths
    pvcheck_passes(cfg)
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok
    append(
        paths.review, "## M1 — Control plane and routing verified: **FAIL** @ 2026-11-26T13:20Z\n"
    )
    result = write_done(cfg, now=T0 + timedelta(hours=2))
    assert not result.ok and result.withdrawn is not None
    assert "M1: the latest review is FAIL" in result.withdrawn
    assert not has_done(paths.status.read_text(encoding="utf-8"))


def test_an_older_fail_appended_later_does_not_block(tmp_path: Path) -> None:
    cfg = docs(tmp_path / "docs")
    pvcheck_passes(cfg)
    append(cfg.docs.paths.review, "M2: FAIL @2026-11-26T12:10Z — written late, about the old run\n")
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok


def test_an_undated_fail_blocks_done_until_a_dated_verdict_follows(tmp_path: Path) -> None:
    cfg = docs(tmp_path / "docs")
    paths = cfg.docs.paths
    pvcheck_passes(cfg)
    append(paths.review, "## M2 — Real CI: **FAIL** @ 2026-11-26\n")
    line = len(paths.review.read_text(encoding="utf-8").splitlines())
    result = write_done(cfg, now=T0 + timedelta(hours=1))
    assert not result.ok
    (problem,) = result.problems
    assert problem.startswith(
        f"M2: {paths.review} line {line}: a FAIL with timestamp '2026-11-26' (expected "
    )
    append(paths.review, "M2: PASS @2026-11-26T12:50Z — re-checked, the leak is gone\n")
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok


def test_done_rule_names_an_unread_verdict_only_while_nothing_follows_it() -> None:
    claims = parse_claims("", "S")  # no claims: only the unread lines matter here
    reading = read_verdicts("M1: FAIL @yesterday\nM2: PASS @soon\nM2: PASS @2026-11-26T12:50Z\n")
    assert [(u.gate, u.superseded) for u in reading.unread] == [("M1", False), ("M2", True)]
    problems = done_rule(claims, reading.verdicts, T0, DAY, unread=reading.unread).problems
    assert problems[0].startswith("M1: REVIEW line 1: a FAIL with timestamp 'yesterday'")
    assert not any("'soon'" in p for p in problems)


def test_the_fixtures_cite_their_source() -> None:
    for path in sorted(RECORD.glob("*.md")):  # the Markdown state files of the record
        head = path.read_text(encoding="utf-8").split("-->", 1)[0]
        assert head.startswith("<!-- ") and "https://git.autonomic.zone/" in head, path.name
