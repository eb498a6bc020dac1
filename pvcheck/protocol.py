"""The Builder/Adversary protocol in machine-docs: every rule of it, as pure functions of the
files' text.

STATUS holds the Builder's claims (one gate header per gate) and pvcheck's `## DONE`; REVIEW
the Adversary's dated verdicts; a person's `## VETO` in either stops DONE. pvcheck writes
`## DONE` only in its own `done` section and removes only that section; a VETO is a person's
and is never removed; REVIEW grows by one dated entry per gate per review and rolls its
oldest entries over to an archive. Here: how claims and verdicts are read, when DONE may be
written (done_rule), when a run, a review or an unreachable target withdraws it, and which
claim a review's PASS lands on. The files are written by pvcheck.evidence, through
pvcheck.statefiles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from pvcheck.errors import StateFileError
from pvcheck.records import GATES, Gate, Verdict, format_ts, parse_ts
from pvcheck.statefiles import FENCE as _FENCE
from pvcheck.statefiles import replace_section, section_body, sections

if TYPE_CHECKING:
    from pvcheck.report import Report

DONE_SECTION = "done"
DONE_HEADING = "## DONE"
_VETO = re.compile(r"^## VETO\b")
_HEADING = re.compile(r"^#{1,2} ")
MAX_VETO_CHARS = 600


@dataclass(frozen=True)
class Veto:
    """The Adversary's stop: a `## VETO` heading and the text under it."""

    path: str
    line: int
    text: str

    def quoted(self) -> str:
        return f"{self.path} line {self.line}: {self.text or '(no reason given)'}"

    @property
    def reason(self) -> str:
        """What it stops: DONE, whatever else was found."""
        return f"VETO at {self.quoted()}"


def person_lines(text: str, path: str) -> list[tuple[int, str | None]]:
    """(line number, line) of what a person wrote: outside pvcheck's sections and outside
    code blocks; a line inside pvcheck's sections is (number, None), a boundary. Lines are
    numbered as str.splitlines() splits them (the way sections() reads the file), and code
    fences are tracked in a person's text only, so nothing rendered from a host can open or
    close one."""
    spans = sorted(sections(text, path).values())
    out: list[tuple[int, str | None]] = []
    offset, fenced = 0, False
    for no, raw in enumerate(text.splitlines(keepends=True), 1):
        owned = any(start <= offset < end for start, end in spans)
        offset += len(raw)
        line = raw.rstrip("\r\n")
        if owned:
            out.append((no, None))
        elif _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((no, line))
    return out


def find_veto(text: str | None, path: str) -> Veto | None:
    """The first `## VETO` heading a person wrote (outside code blocks and outside pvcheck's
    sections), with its text up to the next heading or pvcheck section, on one line."""
    if not text:
        return None
    lines = person_lines(text, path)
    for i, (no, line) in enumerate(lines):
        if line is None or not _VETO.match(line):
            continue
        body = [line.removeprefix("## VETO").strip(" :—-")]
        for _, following in lines[i + 1 :]:
            if following is None or _HEADING.match(following):
                break
            body.append(following.strip())
        said = " ".join(b for b in body if b)
        if len(said) > MAX_VETO_CHARS:
            said = said[: MAX_VETO_CHARS - 1] + "…"
        return Veto(path, no, said)
    return None


def find_vetoes(*docs: tuple[str | None, str]) -> list[Veto]:
    """Every file's VETO, from (text, path) pairs."""
    return [v for text, path in docs if (v := find_veto(text, path)) is not None]


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line not inside a fenced code block."""
    out, fenced = [], False
    for no, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((no, line))
    return out


# A `## DONE` heading as the record writes it: `## DONE` alone, or followed on the same line
# by a space and more (`## DONE — 2026-05-27`). `## DONEX`, `## DONE-ish`, `### DONE` and an
# indented `## DONE` are not one.
_DONE_LINE = re.compile(r"^## DONE(?:[ \t].*)?$")


def is_done_heading(line: str) -> bool:
    """One line is a `## DONE` heading (trailing text and whitespace allowed)."""
    return bool(_DONE_LINE.match(line.rstrip()))


def has_done(text: str | None) -> bool:
    """A phase is done: its STATUS holds a `## DONE` heading line (`## DONE`, or
    `## DONE — <date>` and the like), not one quoted inside a code block (whoever wrote it:
    the precondition phase's STATUS is not pvcheck's)."""
    return bool(text) and any(is_done_heading(line) for _, line in outside_fences(text or ""))


def has_own_done(text: str | None, path: str) -> bool:
    return bool(text) and DONE_SECTION in sections(text or "", path)


def done_section(at: str, freshness_h: float, review_name: str) -> str:
    """Pure: the body of pvcheck's `done` section in STATUS, as `pvcheck done` writes it."""
    return (
        f"{DONE_HEADING}\n\n"
        f"Written @{at}: every gate has a review PASS newer than its claim and within "
        f"{freshness_h:g} h, and no VETO stands (see {review_name}).\n"
    )


def without_done(text: str, path: str) -> str:
    """Pure: STATUS without pvcheck's `done` section (the blank line that came with it too);
    every other byte is kept."""
    spans = sections(text, path)
    if DONE_SECTION not in spans:
        return text
    return _cut(text, *spans[DONE_SECTION])


def _cut(text: str, start: int, end: int) -> str:
    """Pure: text without the owned block at [start, end) and the one blank line
    replace_section put before it."""
    head = text[:start]
    if head.endswith("\n\n"):
        head = head[:-1]
    return head + text[end:]


def stray_done_lines(text: str | None, path: str) -> list[int]:
    """`## DONE` lines outside pvcheck's section (written by a person): pvcheck never edits
    them, but says so when it withdraws its own."""
    if not text:
        return []
    return [no for no, line in person_lines(text, path) if is_done_heading(line or "")]


# REVIEW entries: one owned section per review and gate, appended in the order written.
_ENTRY = re.compile(r"^review[.-]")


def is_entry(section: str) -> bool:
    """A REVIEW entry of pvcheck's (one review, one gate; `review-M1` in older files)."""
    return bool(_ENTRY.match(section))


def entry_name(review_id: str, gate: str) -> str:
    return f"review.{review_id}.{gate}"


def append_entries(text: str, entries: dict[str, str], path: str) -> str:
    """Pure: REVIEW with the new entries appended (review ids are unique; the same review
    written again replaces its own entry in place)."""
    for name, body in entries.items():
        text = replace_section(text, name, body, path)
    return text


@dataclass(frozen=True)
class RollOver:
    kept: str  # REVIEW after the roll-over
    moved: list[str]  # whole entry blocks (markers included), oldest first, for the archive


def roll_over(text: str, path: str, max_bytes: int, gate_of: dict[str, str]) -> RollOver:
    """Pure: while REVIEW is over `max_bytes`, move its oldest entries out, always keeping
    the newest entry of each gate (what `done` reads). Text that is not an entry stays.
    `gate_of` maps an entry's name to its gate."""
    if len(text.encode("utf-8")) <= max_bytes:
        return RollOver(text, [])
    spans = sections(text, path)
    entries = [(name, span) for name, span in spans.items() if _ENTRY.match(name)]
    entries.sort(key=lambda item: item[1][0])
    newest = {gate_of.get(name, name): name for name, _ in entries}
    keep = set(newest.values())
    size = len(text.encode("utf-8"))
    moving: list[tuple[int, int]] = []
    for name, (start, end) in entries:
        if size <= max_bytes:
            break
        if name in keep:
            continue
        moving.append((start, end))
        size -= len(text[start:end].encode("utf-8"))
    moved = [text[start:end] for start, end in moving]
    kept = text
    for start, end in reversed(moving):  # from the end: earlier offsets stay valid
        kept = _cut(kept, start, end)
    return RollOver(kept, moved)


def entry_gate(text: str, path: str) -> dict[str, str]:
    """Entry name -> the gate its header names (`## M1 — …`)."""
    out = {}
    for name, (start, end) in sections(text, path).items():
        if _ENTRY.match(name):
            match = re.search(r"^## (M\d+) — ", text[start:end], re.M)
            out[name] = match.group(1) if match else name
    return out


# --- STATUS: the Builder's claims, one gate header in each owned `gate-M…` section -------------

_GATE_HEADER = re.compile(
    r"^## Gate: (M\d+) — (CLAIMED, awaiting Adversary|PASS @(\S+)|NOT CLAIMED.*)$"
)
_CLAIMED = re.compile(r"^Claimed @(\S+) by run `([^`]+)`")


class ClaimState(StrEnum):
    """A gate's header in STATUS: claimed and awaiting review, passed by a review, or none."""

    CLAIMED = "claimed"
    PASSED = "pass"
    NONE = "not claimed"


@dataclass(frozen=True)
class GateClaim:
    gate: Gate
    state: ClaimState
    claimed_at: datetime | None
    run_id: str | None
    commands: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    @property
    def is_claim(self) -> bool:
        return self.state != ClaimState.NONE and self.claimed_at is not None


# A timestamp later than now by more than this is refused: a hand-written `PASS @2099…`
# would beat every later FAIL and never go stale, and a future claim empties the review's
# log window.
MAX_CLOCK_SKEW = timedelta(minutes=5)


# A UTC timestamp as the record writes it: to the minute (`2026-06-11T07:54Z`, the
# Adversary's form) or to the second (`2026-11-26T12:00:09Z`, pvcheck's).
_RECORD_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?Z$")


def parse_record_ts(text: str) -> datetime | None:
    """A record timestamp (`YYYY-MM-DDTHH:MMZ` or `YYYY-MM-DDTHH:MM:SSZ`, UTC); None for
    anything else (a date alone, an offset, a local time, a typo)."""
    if not _RECORD_TS.match(text):
        return None
    if len(text) == len("YYYY-MM-DDTHH:MMZ"):
        text = text[:-1] + ":00Z"
    return parse_ts(text)


def checked_ts(text: str, path: str, line: int) -> datetime | None:
    """The timestamp, refused (StateFileError naming file and line) when in the future."""
    at = parse_record_ts(text)
    if at is not None and at > datetime.now(UTC) + MAX_CLOCK_SKEW:
        raise StateFileError(path, f"timestamp {text} is in the future; refused", line)
    return at


def _line_of(text: str, line: str) -> int:
    lines = text.splitlines()
    return lines.index(line) + 1 if line in lines else 0


def parse_gate(body: str, gate: Gate, path: str = "STATUS", full_text: str = "") -> GateClaim:
    state, claimed_at, run_id = ClaimState.NONE, None, None
    commands: list[str] = []
    expected: list[str] = []
    in_how = in_expected = fenced = False
    for line in body.splitlines():
        head = _GATE_HEADER.match(line)
        if head:
            if head.group(3):  # PASS @<UTC>
                checked_ts(head.group(3), path, _line_of(full_text or body, line))
            state = (
                ClaimState.CLAIMED
                if head.group(2).startswith("CLAIMED")
                else (ClaimState.PASSED if head.group(2).startswith("PASS") else ClaimState.NONE)
            )
            continue
        claimed = _CLAIMED.match(line)
        if claimed:
            claimed_at = checked_ts(claimed.group(1), path, _line_of(full_text or body, line))
            run_id = claimed.group(2)
        if line.startswith("### "):
            in_how, in_expected = line.startswith("### HOW"), line.startswith("### EXPECTED")
            fenced = False
            continue
        if in_how and line.startswith("```"):
            fenced = not fenced
        elif in_how and fenced and line:  # the commands are the fenced block's lines
            commands.append(line)
        if in_expected:
            row = re.match(r"^\| (\d+) \| (.*) \|$", line)
            if row:
                expected.append(row.group(2).replace("\\|", "|"))
    return GateClaim(gate, state, claimed_at, run_id, commands, expected)


def parse_claims(status_text: str, path: str) -> dict[str, GateClaim]:
    out: dict[str, GateClaim] = {}
    for gate in GATES:
        body = section_body(status_text, f"gate-{gate}", path) or ""
        # Claims are read only inside pvcheck's own section (a header pasted elsewhere is
        # ignored), and a section with a second header was edited by hand: refused.
        headers = [line for line in body.splitlines() if _GATE_HEADER.match(line)]
        if len(headers) > 1:
            raise StateFileError(
                path, f"section gate-{gate} holds {len(headers)} gate headers; expected one"
            )
        out[gate] = parse_gate(body, gate, path, status_text)
    return out


def mark_gate_passed(status_text: str, gate: str, at: str, path: str) -> str:
    """Pure: the gate's claim header becomes `## Gate: M1 — PASS @<UTC>`; the rest is kept."""
    body = section_body(status_text, f"gate-{gate}", path)
    if body is None:
        return status_text
    lines = body.splitlines()
    if lines and _GATE_HEADER.match(lines[0]):
        lines[0] = f"## Gate: {gate} — PASS @{at}"
    return replace_section(status_text, f"gate-{gate}", "\n".join(lines) + "\n", path)


def mark_reviewed(
    status_text: str,
    verdicts: Mapping[str, Verdict],
    reviewed: Mapping[str, GateClaim],
    at: str,
    path: str,
) -> str:
    """Pure: each gate the review passed gets its PASS header, only on the claim the review
    verified (`reviewed`; read again from `status_text` under the lock): a run that claimed
    again while the review ran keeps its claim awaiting review."""
    current = parse_claims(status_text, path)
    new = status_text
    for name, verdict in verdicts.items():
        seen = reviewed[name]
        same_claim = (current[name].run_id, current[name].claimed_at) == (
            seen.run_id,
            seen.claimed_at,
        )
        if verdict == Verdict.PASS and same_claim:
            new = mark_gate_passed(new, name, at, path)
    return new


# --- REVIEW: the Adversary's verdicts, the newest per gate -----------------------------------

# A verdict, in each form the record writes one (whoever wrote it):
# - a heading: `## M1 — <title>: **PASS** @ 2026-06-11T07:54Z` (the Adversary, a space after
#   `@`) or `## M1 — <title>: **FAIL** @2026-11-26T12:00:09Z` (pvcheck); `###` too; text may
#   follow the timestamp after a space;
# - a short line: `M2: FAIL @2026-06-11T09:10Z` (what the Adversary's prompt prescribes),
#   optionally as a list item, evidence allowed after the timestamp.
# The timestamp is group 3, and whatever stands there is checked separately: a verdict whose
# timestamp cannot be read is not a verdict (UnreadVerdict says where it is).
_VERDICT_HEADING = re.compile(r"^#{2,3} (M\d+) — .*: \*\*(PASS|FAIL)\*\*(?:\s*@ ?(\S*))?(?:\s.*)?$")
_VERDICT_SHORT = re.compile(r"^(?:[-*] )?(M\d+): (PASS|FAIL) @ ?(\S*)(?:\s.*)?$")
_REVIEWED = re.compile(r"^Reviewed the claim of run `([^`]+)`")


@dataclass(frozen=True)
class GateReview:
    """A gate's verdict as REVIEW records it (PASS or FAIL), with when it was given."""

    verdict: Verdict
    at: datetime | None
    # The claim's run id as pvcheck's review records it; None for a verdict written by hand.
    reviewed_run: str | None = None


@dataclass(frozen=True)
class UnreadVerdict:
    """A line shaped like a verdict whose timestamp is missing or unreadable: it is not a
    verdict (it cannot be ordered against the others), and it is said so."""

    gate: str
    verdict: Verdict
    path: str
    line: int
    stamp: str  # what stood after `@` ("" when nothing did)
    superseded: bool  # a readable verdict of the same gate stands later in the file

    @property
    def reason(self) -> str:
        said = f"timestamp {self.stamp!r}" if self.stamp else "no timestamp"
        return (
            f"{self.gate}: {self.path} line {self.line}: a {self.verdict.label} with {said} "
            "(expected YYYY-MM-DDTHH:MMZ or YYYY-MM-DDTHH:MM:SSZ, UTC) is not read as a "
            f"verdict; append a dated verdict for {self.gate} after it"
        )


@dataclass(frozen=True)
class VerdictReading:
    verdicts: dict[str, GateReview]  # gate -> its newest verdict
    unread: list[UnreadVerdict]  # verdict-shaped lines without a readable timestamp


def match_verdict(line: str) -> tuple[str, Verdict, str | None] | None:
    """(gate, verdict, what stands after `@`, None if no `@`) when the line has a verdict's
    shape in one of the record's forms; None otherwise."""
    match = _VERDICT_HEADING.match(line) or _VERDICT_SHORT.match(line)
    if not match:
        return None
    gate, result, when = match.groups()
    return gate, Verdict(result.lower()), when


def read_verdicts(review_text: str, path: str = "REVIEW") -> VerdictReading:
    """Every gate's newest verdict in REVIEW, and the verdict-shaped lines that could not be
    read. A verdict is the header line of one of pvcheck's entries (with the run its
    "Reviewed the claim of run" line names), or a line anyone else wrote outside pvcheck's
    sections and code blocks, in any of the record's forms; nothing else inside an entry
    (findings, command output) can be read as one. The newest by timestamp wins; of two with
    the same timestamp, the later in the file."""
    candidates: list[tuple[int, str, str | None]] = []  # (line number, header, reviewed run)
    for name, (start, end) in sections(review_text, path).items():
        if not is_entry(name):
            continue
        body = review_text[start:end].splitlines()[1:-1]
        reviewed = next((m.group(1) for line in body if (m := _REVIEWED.match(line))), None)
        first = len(review_text[:start].splitlines()) + 2
        candidates.append((first, body[0] if body else "", reviewed))
    candidates += [(no, line, None) for no, line in person_lines(review_text, path) if line]
    out: dict[str, GateReview] = {}
    last_read: dict[str, int] = {}  # gate -> line of its last readable verdict
    unread: list[tuple[str, Verdict, int, str]] = []
    for no, line, reviewed in sorted(candidates):
        shaped = match_verdict(line)
        if shaped is None:
            continue
        gate, result, when = shaped
        at = checked_ts(when, path, no) if when else None
        if at is None:
            unread.append((gate, result, no, when or ""))
            continue
        last_read[gate] = no
        latest = out.get(gate)
        # Entries are appended in order: of two with the same timestamp, the later one wins.
        if latest is None or latest.at is None or at >= latest.at:
            out[gate] = GateReview(result, at, reviewed)
    return VerdictReading(
        out,
        [
            UnreadVerdict(gate, result, path, no, stamp, last_read.get(gate, 0) > no)
            for gate, result, no, stamp in unread
        ],
    )


def parse_verdicts(review_text: str, path: str = "REVIEW") -> dict[str, GateReview]:
    """Gate -> its newest verdict in REVIEW (see read_verdicts)."""
    return read_verdicts(review_text, path).verdicts


# --- DONE: when it may be written, and when a run, a review or `done` withdraws it -----------


@dataclass(frozen=True)
class DoneDecision:
    ok: bool
    problems: list[str]

    @property
    def withdrawal(self) -> str:
        """Why `pvcheck done` withdraws a DONE standing from before."""
        return "pvcheck done: " + "; ".join(self.problems)


def done_rule(
    claims: Mapping[str, GateClaim],
    verdicts: Mapping[str, GateReview],
    now: datetime,
    freshness: timedelta,
    follows: str = "latest",
    vetoes: Sequence[Veto] = (),
    unread: Sequence[UnreadVerdict] = (),
) -> DoneDecision:
    """Pure: no VETO stands, and every gate has a PASS of its latest claim within the
    freshness window. The verdict read is the newest in REVIEW whoever wrote it, so a FAIL
    dated after pvcheck's PASS blocks DONE; so does a verdict line whose timestamp cannot be
    read (`unread`) until a readable verdict of that gate follows it in the file.

    A verdict from `pvcheck review` names the claim's run it verified, which settles "newer
    than the claim" even when both fall in the same second. A verdict without that line (one
    written by hand) must carry a timestamp strictly after the claim's. With `follows =
    "first"` a fresh PASS of an earlier claim still counts while the gate stays claimed.
    """
    problems = [v.reason for v in vetoes]
    problems += [u.reason for u in unread if not u.superseded]
    for gate in GATES:
        claim = claims.get(gate)
        verdict = verdicts.get(gate)
        if claim is None or not claim.is_claim:
            problems.append(f"{gate}: no claim in STATUS")
            continue
        if verdict is None:
            problems.append(f"{gate}: no review verdict in REVIEW")
            continue
        at = verdict.at
        if verdict.verdict != Verdict.PASS or at is None:
            problems.append(f"{gate}: the latest review is {verdict.verdict.label}")
        elif follows == "first" and now - at <= freshness:
            continue
        elif verdict.reviewed_run is not None and verdict.reviewed_run != claim.run_id:
            problems.append(
                f"{gate}: the PASS reviewed run {verdict.reviewed_run}, "
                f"not the current claim of run {claim.run_id}"
            )
        elif verdict.reviewed_run is None and claim.claimed_at and at <= claim.claimed_at:
            problems.append(
                f"{gate}: the PASS @{format_ts(at)} is not newer than the claim "
                f"@{format_ts(claim.claimed_at)}"
            )
        elif now - at > freshness:
            problems.append(f"{gate}: the PASS @{format_ts(at)} is stale (older than {freshness})")
    return DoneDecision(not problems, problems)


def run_withdraws_done(report: Report, follows: str, standing: Sequence[Veto]) -> str | None:
    """Pure: why this run's evidence withdraws `## DONE` (None: DONE may stay)."""
    if standing:
        return standing[0].reason
    if report.verdict == Verdict.FAIL:
        failing = ", ".join(c.id for c in report.failing[:5])
        return f"run {report.run_id} verdict FAIL ({failing})"
    if report.verdict == Verdict.INCOMPLETE:
        return f"run {report.run_id} verdict INCOMPLETE: {report.incomplete_reason}"
    if follows == "latest":
        return (
            f"run {report.run_id} made a new claim ({' '.join(g.gate for g in report.gates)}) "
            'that awaits review (docs.done_follows = "latest")'
        )
    return None


def review_withdraws_done(
    review_id: str,
    verdicts: Mapping[str, Verdict],
    findings: Iterable[tuple[str, str]],
    standing: Sequence[Veto],
) -> str | None:
    """Pure: why this review withdraws `## DONE` (a failed gate or a standing VETO);
    `findings` are (gate, title) pairs."""
    if standing:
        return standing[0].reason
    failed = [g for g, v in verdicts.items() if v != Verdict.PASS]
    if not failed:
        return None
    found = [title for gate, title in findings if gate in failed][:3]
    return f"review {review_id} failed {' '.join(failed)}" + (
        ": " + "; ".join(found) if found else ""
    )


def unreachable_withdraws_done(run_id: str, target: str) -> str:
    """Pure: why a run that could not reach its target withdraws `## DONE` (always: a run
    that proved nothing leaves no DONE standing)."""
    return f"run {run_id} could not reach target {target}"
