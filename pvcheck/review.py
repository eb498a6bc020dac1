"""The independent review: parse what the builder claimed, compare it with what the host shows
now, and judge each gate. Parsing, comparing and the DONE rule are pure; the review flow does
the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pvcheck.errors import StateFileError
from pvcheck.facts import HostFacts
from pvcheck.records import GATES, format_ts, parse_ts
from pvcheck.statefiles import section_body

_GATE_HEADER = re.compile(
    r"^## Gate: (M\d+) — (CLAIMED, awaiting Adversary|PASS @(\S+)|NOT CLAIMED.*)$"
)
_CLAIMED = re.compile(r"^Claimed @(\S+) by run `([^`]+)`")
_REVIEW = re.compile(r"^## (M\d+) — .*: \*\*(PASS|FAIL)\*\* @ ?(\S+)\s*$")
_REVIEWED = re.compile(r"^Reviewed the claim of run `([^`]+)`")
_ROW = re.compile(r"^\| (.+?) \| (.+?) \| (.+?) \|$")


@dataclass(frozen=True)
class GateClaim:
    gate: str
    state: str  # "claimed" | "pass" | "not claimed"
    claimed_at: datetime | None
    run_id: str | None
    commands: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    @property
    def is_claim(self) -> bool:
        return self.state in ("claimed", "pass") and self.claimed_at is not None


# A timestamp later than now by more than this is refused: a hand-written `PASS @2099…`
# would beat every later FAIL and never go stale, and a future claim empties the review's
# log window.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def checked_ts(text: str, path: str, line: int) -> datetime | None:
    """The timestamp, refused (StateFileError naming file and line) when in the future."""
    at = parse_ts(text)
    if at is not None and at > datetime.now(UTC) + MAX_CLOCK_SKEW:
        raise StateFileError(path, f"timestamp {text} is in the future; refused", line)
    return at


def _line_of(text: str, line: str) -> int:
    lines = text.splitlines()
    return lines.index(line) + 1 if line in lines else 0


def parse_gate(body: str, gate: str, path: str = "STATUS", full_text: str = "") -> GateClaim:
    state, claimed_at, run_id = "not claimed", None, None
    commands: list[str] = []
    expected: list[str] = []
    in_how = in_expected = False
    for line in body.splitlines():
        head = _GATE_HEADER.match(line)
        if head:
            if head.group(3):  # PASS @<UTC>
                checked_ts(head.group(3), path, _line_of(full_text or body, line))
            state = (
                "claimed"
                if head.group(2).startswith("CLAIMED")
                else ("pass" if head.group(2).startswith("PASS") else "not claimed")
            )
            continue
        claimed = _CLAIMED.match(line)
        if claimed:
            claimed_at = checked_ts(claimed.group(1), path, _line_of(full_text or body, line))
            run_id = claimed.group(2)
        if line.startswith("### "):
            in_how, in_expected = line.startswith("### HOW"), line.startswith("### EXPECTED")
            continue
        if in_how and line and not line.startswith("```"):
            commands.append(line)
        if in_expected:
            row = re.match(r"^\| (\d+) \| (.*) \|$", line)
            if row:
                expected.append(row.group(2).replace("\\|", "|"))
    return GateClaim(gate, state, claimed_at, run_id, commands, expected)


def parse_claims(status_text: str, path: str) -> dict[str, GateClaim]:
    out = {}
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


def parse_evidence(status_text: str, path: str) -> dict[str, str]:
    """Fact -> the 'after' column of the STATUS evidence table."""
    body = section_body(status_text, "evidence", path) or ""
    out = {}
    for line in body.splitlines():
        row = _ROW.match(line)
        if row and not row.group(1).startswith(("fact", "---")):
            out[row.group(1).strip("`")] = row.group(3)
    return out


@dataclass(frozen=True)
class Verdict:
    result: str  # PASS | FAIL
    at: datetime | None
    # The claim's run id as pvcheck's review records it; None for a verdict written by hand.
    reviewed_run: str | None = None


def parse_verdicts(review_text: str, path: str = "REVIEW") -> dict[str, Verdict]:
    """Gate -> its verdict in REVIEW; the latest per gate wins."""
    out: dict[str, Verdict] = {}
    current: str | None = None  # the gate whose verdict the following lines belong to
    for no, line in enumerate(review_text.splitlines(), 1):
        match = _REVIEW.match(line)
        if match:
            gate, result, when = match.groups()
            at, current = checked_ts(when, path, no), None
            latest = out.get(gate)
            if latest is None or (at and (latest.at is None or at > latest.at)):
                out[gate], current = Verdict(result, at), gate
            continue
        reviewed = _REVIEWED.match(line)
        if reviewed and current:
            out[current] = Verdict(out[current].result, out[current].at, reviewed.group(1))
        elif line.startswith("## "):
            current = None
    return out


@dataclass(frozen=True)
class Finding:
    """Something the review saw that the builder's claims do not show."""

    key: str  # stable across reviews: the same problem found again is the same finding
    gate: str
    title: str
    repro: str


def compare_evidence(recorded: dict[str, str], live: HostFacts) -> list[Finding]:
    """Pure: every number in STATUS's 'after' column that the host does not show now."""
    findings = []
    net = live.network
    if net is None:
        return [
            Finding(
                "status:network",
                "M1",
                "the network recorded in STATUS is gone",
                "docker network ls",
            )
        ]
    live_values = {
        "subnet": net.subnet,
        "capacity": str(net.capacity),
        "service VIPs": str(net.vips),
        "task IPs": str(net.task_ips),
        "LB endpoints": str(net.lb_endpoints),
        "other containers": str(net.containers),
        **{s.name: f"{s.running}/{s.desired}" for s in live.services},
    }
    for fact, now in live_values.items():
        said = recorded.get(fact)
        if said is None:
            continue
        said_value = said.split(",")[0].strip()
        if said_value != now:
            gate = "M1" if fact in ("subnet", "capacity") or "_" in fact else "M2"
            findings.append(
                Finding(
                    f"status:{fact}",
                    gate,
                    f"STATUS says {fact} = {said_value}, the host shows {now}",
                    f"docker network inspect --verbose {net.name}  # {fact}: expected {said_value}",
                )
            )
    used = recorded.get("endpoints used")
    if used and used.isdigit() and net.used > int(used):
        findings.append(
            Finding(
                "leak:endpoints",
                "M2",
                f"{net.used} endpoints on {net.name} now, above the builder's recorded {used}",
                f"docker network inspect --verbose {net.name}",
            )
        )
    return findings


@dataclass(frozen=True)
class DoneDecision:
    ok: bool
    problems: list[str]


def done_rule(
    claims: dict[str, GateClaim],
    verdicts: dict[str, Verdict],
    now: datetime,
    freshness: timedelta,
) -> DoneDecision:
    """Pure: every gate needs a PASS of its latest claim, within the freshness window.

    A verdict from `pvcheck review` names the claim's run it verified, which settles "newer
    than the claim" even when both fall in the same second. A verdict without that line (one
    written by hand) must carry a timestamp strictly after the claim's.
    """
    problems = []
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
        if verdict.result != "PASS" or at is None:
            problems.append(f"{gate}: the latest review is {verdict.result}")
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


_FINDING = re.compile(r"^### (A\d+) \[adversary\] (.*)$")
_KEY = re.compile(r"^<!-- key: (.+) -->$")
_STATE = re.compile(r"^\*\*Status:\*\* (OPEN|FIXED)(.*)$")


@dataclass
class FindingItem:
    num: str
    key: str
    title: str
    status: str  # OPEN | FIXED
    note: str  # text after the status (when fixed)
    repro: str


def parse_findings(body: str | None) -> list[FindingItem]:
    items: list[FindingItem] = []
    for line in (body or "").splitlines():
        head = _FINDING.match(line)
        if head:
            items.append(FindingItem(head.group(1), "", head.group(2), "OPEN", "", ""))
            continue
        if not items:
            continue
        key, state = _KEY.match(line), _STATE.match(line)
        if key:
            items[-1].key = key.group(1)
        elif state:
            items[-1].status, items[-1].note = state.group(1), state.group(2)
        elif line.startswith("Repro: "):
            items[-1].repro = line.removeprefix("Repro: ")
    return items


def merge_findings(items: list[FindingItem], found: list[Finding], when: str) -> list[FindingItem]:
    """Pure: a finding found again is kept once (re-opened if it was fixed); one no longer
    reproducible is marked FIXED; a new one gets the next A-number."""
    now = {f.key: f for f in found}
    out = []
    for item in items:
        if item.key in now:
            f = now[item.key]
            item = FindingItem(
                item.num, item.key, f.title, "OPEN", f" (seen again @{when})", f.repro
            )
        elif item.status == "OPEN":
            item = FindingItem(
                item.num,
                item.key,
                item.title,
                "FIXED",
                f" @{when}: no longer reproducible",
                item.repro,
            )
        out.append(item)
    known = {i.key for i in items}
    next_num = 1 + max((int(i.num[1:]) for i in items), default=0)
    for f in found:
        if f.key not in known:
            out.append(
                FindingItem(f"A{next_num}", f.key, f.title, "OPEN", f" (found @{when})", f.repro)
            )
            known.add(f.key)
            next_num += 1
    return out


def mark_gate_passed(status_text: str, gate: str, at: str, path: str) -> str:
    """Pure: the gate's claim header becomes `## Gate: M1 — PASS @<UTC>`; the rest is kept."""
    from pvcheck.statefiles import replace_section

    body = section_body(status_text, f"gate-{gate}", path)
    if body is None:
        return status_text
    lines = body.splitlines()
    if lines and _GATE_HEADER.match(lines[0]):
        lines[0] = f"## Gate: {gate} — PASS @{at}"
    return replace_section(status_text, f"gate-{gate}", "\n".join(lines) + "\n", path)
