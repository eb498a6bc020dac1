"""The independent review: parse what the builder claimed, compare it with what the host shows
now, and judge each gate. Parsing, comparing and the DONE rule are pure; the review flow does
the I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pvcheck.allocator import FIGURES
from pvcheck.errors import StateFileError
from pvcheck.facts import HostFacts, NetworkFacts
from pvcheck.protocol import is_entry, person_lines
from pvcheck.records import GATES, Check, Gate, Status, format_ts, parse_ts
from pvcheck.report import DocsOutcome
from pvcheck.safeio import read_capped
from pvcheck.statefiles import section_body, sections

_GATE_HEADER = re.compile(
    r"^## Gate: (M\d+) — (CLAIMED, awaiting Adversary|PASS @(\S+)|NOT CLAIMED.*)$"
)
_CLAIMED = re.compile(r"^Claimed @(\S+) by run `([^`]+)`")
_REVIEW = re.compile(r"^## (M\d+) — .*: \*\*(PASS|FAIL)\*\* @ ?(\S+)\s*$")
_REVIEWED = re.compile(r"^Reviewed the claim of run `([^`]+)`")


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


def checked_ts(text: str, path: str, line: int) -> datetime | None:
    """The timestamp, refused (StateFileError naming file and line) when in the future."""
    at = parse_ts(text)
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


@dataclass(frozen=True)
class Verdict:
    result: str  # PASS | FAIL
    at: datetime | None
    # The claim's run id as pvcheck's review records it; None for a verdict written by hand.
    reviewed_run: str | None = None


def parse_verdicts(review_text: str, path: str = "REVIEW") -> dict[str, Verdict]:
    """Gate -> its newest verdict in REVIEW. A verdict is the header line of one of
    pvcheck's entries (with the run its "Reviewed the claim of run" line names), or a line a
    person wrote outside pvcheck's sections and code blocks; nothing else inside an entry
    (findings, command output) can be read as one."""
    candidates: list[tuple[int, str, str | None]] = []  # (line number, header, reviewed run)
    for name, (start, end) in sections(review_text, path).items():
        if not is_entry(name):
            continue
        body = review_text[start:end].splitlines()[1:-1]
        reviewed = next((m.group(1) for line in body if (m := _REVIEWED.match(line))), None)
        first = len(review_text[:start].splitlines()) + 2
        candidates.append((first, body[0] if body else "", reviewed))
    candidates += [(no, line, None) for no, line in person_lines(review_text, path) if line]
    out: dict[str, Verdict] = {}
    for no, line, reviewed in sorted(candidates):
        match = _REVIEW.match(line)
        if not match:
            continue
        gate, result, when = match.groups()
        at = checked_ts(when, path, no)
        latest = out.get(gate)
        # Entries are appended in order: of two in the same second, the later one wins.
        if latest is None or (at and (latest.at is None or at >= latest.at)):
            out[gate] = Verdict(result, at, reviewed)
    return out


@dataclass(frozen=True)
class Finding:
    """Something the review saw that the builder's claims do not show."""

    key: str  # stable across reviews: the same problem found again is the same finding
    gate: Gate
    title: str
    repro: str


@dataclass(frozen=True)
class Recorded:
    """What a run recorded when it finished (its JSON report): the numbers a review
    re-measures, never the Markdown."""

    run_id: str
    network: dict[str, str]  # fact -> value, as STATUS's evidence table names them
    services: dict[str, str]  # control-plane service -> "running/desired"
    used: int | None
    # Addresses per service on the network after the run; None in a report from before
    # pvcheck recorded them (the review then compares the total only).
    per_service: dict[str, int] | None = None
    containers: int = 0
    deploy_stacks: list[str] = field(default_factory=list)
    allocator: dict[str, int] | None = None  # allocator.FIGURES
    run_logs: tuple[str, str] | None = None  # the run's own log window (since, until)
    probe_ids: tuple[str, ...] = ()  # the run's probe services its VIP lines name


MAX_REPORT_BYTES = 16 * 1024 * 1024
_OBJECT_ID = re.compile(r"^[a-z0-9]{1,64}$")
_NETWORK_FACTS = {
    "subnet": "subnet",
    "capacity": "capacity",
    "service VIPs": "vips",
    "task IPs": "task_ips",
    "LB endpoints": "lb_endpoints",
    "other containers": "containers",
}
_M1_FACTS = {"subnet", "capacity"}  # the network's shape; endpoint counts are attributed


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# A name as docker and pvcheck write them: nothing that could end a Markdown line or span.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class _Fields:
    """Strict reading of a report's values: a report pvcheck did not write is refused,
    naming the field (its numbers decide a gate; its names reach REVIEW)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def refuse(self, field: str, why: str) -> StateFileError:
        return StateFileError(self.path, f"field {field}: {why}; not a report pvcheck wrote")

    def count(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.refuse(field, f"{value!r} is not a count")
        return value

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.refuse(field, f"{str(value)[:80]!r} is not a name")
        return value

    def counts(self, value: Any, field: str, keys: tuple[str, ...] | None = None) -> dict[str, int]:
        return {
            self.name(k, field): self.count(v, f"{field}.{k}")
            for k, v in _obj(value).items()
            if keys is None or k in keys
        }

    def stamp(self, value: Any, field: str) -> str:
        at = parse_ts(value) if isinstance(value, str) else None
        if at is None:
            raise self.refuse(field, f"{str(value)[:80]!r} is not a UTC timestamp")
        return format_ts(at)


def recorded_from_json(doc: Any, path: str) -> Recorded:
    """Pure: the numbers of a run's JSON report; a report pvcheck did not write is refused,
    naming the field."""
    if not isinstance(doc, dict) or not isinstance(doc.get("run_id"), str):
        raise StateFileError(path, "not a pvcheck run report (no run_id)")
    read = _Fields(path)
    run_id = read.name(doc["run_id"], "run_id")
    after = _obj(_obj(doc.get("facts")).get("after"))
    net = _obj(after.get("network"))
    network = {}
    for fact, key in _NETWORK_FACTS.items():
        if key == "subnet" and key in net:
            if not _is_net(net[key]):
                raise read.refuse("facts.after.network.subnet", "not a subnet")
            network[fact] = str(net[key])
        elif key in net:
            network[fact] = str(read.count(net[key], f"facts.after.network.{key}"))
    listed = after.get("services")
    services = {
        read.name(s["name"], "facts.after.services.name"): (
            f"{read.count(s.get('running'), 'running')}/{read.count(s.get('desired'), 'desired')}"
        )
        for s in (listed if isinstance(listed, list) else [])
        if isinstance(s, dict) and "name" in s
    }
    used = read.count(net["used"], "facts.after.network.used") if "used" in net else None
    per_service = (
        read.counts(net["per_service"], "facts.after.network.per_service")
        if isinstance(net.get("per_service"), dict)
        else None
    )
    stacks = _obj(doc.get("deploy")).get("stacks")
    alloc = doc.get("allocator")
    logs = _obj(doc.get("run_logs"))
    window = None
    if "since" in logs or "until" in logs:
        since = read.stamp(logs.get("since"), "run_logs.since")
        window = (since, read.stamp(logs.get("until"), "run_logs.until"))
    return Recorded(
        run_id,
        network,
        services,
        used,
        per_service,
        read.count(net["containers"], "containers") if "containers" in net else 0,
        [read.name(x, "deploy.stacks") for x in stacks] if isinstance(stacks, list) else [],
        read.counts(alloc, "allocator", FIGURES) if isinstance(alloc, dict) else None,
        window,
        _probe_ids(read, logs),
    )


def _probe_ids(read: Any, logs: dict[str, Any]) -> tuple[str, ...]:
    """The probe services the run's VIP lines name: swarm object IDs only, at most a few."""
    ids = logs.get("probe_ids")
    if not isinstance(ids, list):
        return ()
    if len(ids) > 64 or not all(isinstance(i, str) and _OBJECT_ID.match(i) for i in ids):
        raise read.refuse("run_logs.probe_ids", "not a short list of swarm object IDs")
    return tuple(ids)


def _is_net(value: Any) -> bool:
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return True


def read_recorded(path: Path) -> Recorded | None:
    """The latest run's recorded numbers (None when no run wrote a report here)."""
    data = read_capped(path, MAX_REPORT_BYTES)
    if data is None:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise StateFileError(str(path), f"not JSON: {exc}") from None
    return recorded_from_json(doc, str(path))


@dataclass(frozen=True)
class Endpoints:
    """The network's endpoints now versus after the run, attributed per service as the
    allocator does: pvcheck's own, other services' churn, and what nothing explains."""

    recorded: int
    now: int
    ours: dict[str, int]  # pvcheck's services (a run label, the deploy proof's stacks) now
    churn: dict[str, int]  # other services' change since the run, by name (new ones too)
    containers: int  # change of plain containers (`docker run --network`)
    unexplained: int
    lb: int = 0  # change of load-balancer endpoints (one per node with a task there)

    def churn_lines(self) -> list[str]:
        lines = [f"service {name}: {n:+d} endpoint(s)" for name, n in self.churn.items() if n]
        if self.containers:
            lines.append(f"plain containers: {self.containers:+d}")
        if self.lb:
            lines.append(f"load-balancer endpoints (nodes with a task there): {self.lb:+d}")
        return lines


def attribute_endpoints(
    recorded: Recorded, live: NetworkFacts, ours: set[str], stacks: list[str]
) -> Endpoints | None:
    """Pure: split the change since the run; None when the report has no per-service figures."""
    if recorded.per_service is None or recorded.used is None:
        return None
    prefixes = tuple(f"{s}_" for s in stacks)

    def is_ours(name: str) -> bool:
        return name in ours or (bool(prefixes) and name.startswith(prefixes))

    before, now = recorded.per_service, live.per_service
    names = sorted(set(before) | set(now))
    change = {n: now.get(n, 0) - before.get(n, 0) for n in names}
    mine = {n: now[n] for n in names if is_ours(n) and now.get(n)}
    churn = {n: d for n, d in change.items() if d and not is_ours(n)}
    containers = live.containers - recorded.containers
    # One load-balancer endpoint per node holding a task on the network: a node that joins
    # (or gets its first task there) moves it; that is the swarm's shape, not a leak.
    lb = live.lb_endpoints - int(recorded.network.get("LB endpoints", live.lb_endpoints))
    explained = sum(change.values()) + containers + lb
    unexplained = live.used - recorded.used - explained
    return Endpoints(recorded.used, live.used, mine, churn, containers, unexplained, lb)


@dataclass(frozen=True)
class Comparison:
    findings: list[Finding]
    churn: list[str]  # reported, never failing a gate


def compare_evidence(
    recorded: Recorded, live: HostFacts, ours: set[str] | None = None
) -> Comparison:
    """Pure: the run's report against the host now. The network's shape and the control
    plane must be as recorded (M1); endpoints are attributed: pvcheck's own or unexplained
    ones fail M2, other services' churn since the run is only reported."""
    net = live.network
    if net is None:
        return Comparison(
            [
                Finding(
                    "report:network",
                    Gate.M1,
                    "the network recorded by the run is gone",
                    "docker network ls",
                )
            ],
            [],
        )
    now_network = {"subnet": net.subnet, "capacity": str(net.capacity)}
    now_services = {s.name: f"{s.running}/{s.desired}" for s in live.services}
    differing = [
        (fact, said, now_network[fact])
        for fact, said in recorded.network.items()
        if fact in _M1_FACTS and said != now_network[fact]
    ]
    differing += [
        (name, said, now_services.get(name, "gone"))
        for name, said in recorded.services.items()
        if said != now_services.get(name, "gone")
    ]
    findings = [
        Finding(
            f"report:{fact}",
            Gate.M1,
            f"the run's report says {fact} = {said}, the host shows {now}",
            f"docker network inspect --verbose {net.name}  # {fact}: expected {said}",
        )
        for fact, said, now in differing
    ]
    inspect = f"docker network inspect --verbose {net.name}"
    split = attribute_endpoints(recorded, net, ours or set(), recorded.deploy_stacks)
    if split is None:  # an older report: the total is all there is to compare
        if recorded.used is not None and net.used > recorded.used:
            findings.append(
                Finding(
                    "leak:endpoints",
                    Gate.M2,
                    f"{net.used} endpoints on {net.name} now, above the run's recorded "
                    f"{recorded.used}",
                    inspect,
                )
            )
        return Comparison(findings, [])
    findings += [
        Finding(
            f"leak:ours:{name}",
            Gate.M2,
            f"{n} endpoint(s) on {net.name} still held by pvcheck's {name}",
            f"{inspect}  # service {name}",
        )
        for name, n in split.ours.items()
    ]
    if split.unexplained > 0:
        moved = sum(split.churn.values()) + split.containers + split.lb
        churn = f"; churn {moved:+d}" if moved else ""
        findings.append(
            Finding(
                "leak:unexplained",
                Gate.M2,
                f"{split.unexplained} endpoint(s) on {net.name} that no service accounts for "
                f"(after the run {split.recorded}, now {split.now}{churn})",
                inspect,
            )
        )
    return Comparison(findings, split.churn_lines())


def history_of(recorded: Recorded, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The history record the report's run wrote (its newest, should a run id repeat)."""
    return next((r for r in reversed(history) if r.get("run_id") == recorded.run_id), None)


def compare_allocator(recorded: Recorded, history: list[dict[str, Any]]) -> list[Finding]:
    """Pure: the allocator figures of the run's report against its history record (written
    by the same run, read back independently): a figure edited in one is a finding."""
    if recorded.allocator is None:
        return []
    record = history_of(recorded, history)
    kept = {
        k: v
        for k, v in _obj(record.get("allocator") if record else None).items()
        if isinstance(v, int) and not isinstance(v, bool)
    }
    if not kept:
        return [
            Finding(
                "report:allocator",
                Gate.M2,
                f"no allocator figures for run {recorded.run_id} in the history record",
                "tail -n 5 HISTORY file  # the run's record",
            )
        ]
    said = recorded.allocator
    return [
        Finding(
            f"report:allocator.{key}",
            Gate.M2,
            f"the run's report says allocator {key} = {said.get(key, 'nothing')}, its history "
            f"record {kept.get(key, 'nothing')}",
            "compare REPORT json .allocator with the HISTORY record of the run",
        )
        for key in FIGURES
        if key not in said or kept.get(key) != said[key]
    ]


def compare_totals(recorded: Recorded, history: list[dict[str, Any]]) -> list[Finding]:
    """Pure: the report's endpoint figures against themselves and the run's history record,
    so an edited report cannot move a leak into "churn": the total must be the history's,
    and the per-service addresses must add up to the VIPs and task IPs."""
    findings = []
    record = history_of(recorded, history)
    kept = record.get("endpoints") if record else None
    if recorded.used is not None and kept != recorded.used:
        findings.append(
            Finding(
                "report:endpoints",
                Gate.M2,
                f"the run's report says {recorded.used} endpoints after the run, its history "
                f"record {kept if kept is not None else 'nothing'}",
                "compare REPORT json .facts.after.network.used with the HISTORY record",
            )
        )
    listed = sum((recorded.per_service or {}).values())
    vips, tasks = (int(recorded.network.get(k, 0)) for k in ("service VIPs", "task IPs"))
    totals = {"service VIPs", "task IPs"} <= recorded.network.keys()
    if recorded.per_service is not None and totals and listed > vips + tasks:
        findings.append(
            Finding(
                "report:per_service",
                Gate.M2,
                f"the run's report counts {listed} addresses per service, more than its "
                f"{vips} VIPs and {tasks} task IPs",
                "compare REPORT json .facts.after.network.per_service with its totals",
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
    follows: str = "latest",
) -> DoneDecision:
    """Pure: every gate needs a PASS of its latest claim, within the freshness window.

    A verdict from `pvcheck review` names the claim's run it verified, which settles "newer
    than the claim" even when both fall in the same second. A verdict without that line (one
    written by hand) must carry a timestamp strictly after the claim's. With `follows =
    "first"` a fresh PASS of an earlier claim still counts while the gate stays claimed.
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


@dataclass
class ReviewResult:
    review_id: str
    at: str
    claims: dict[str, GateClaim]
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    churn: list[str] = field(default_factory=list)  # others' change since the claim
    docs: DocsOutcome = field(default_factory=DocsOutcome)

    @property
    def verdict(self) -> str:
        return (
            "pass" if self.verdicts and all(v == "PASS" for v in self.verdicts.values()) else "fail"
        )

    def judge(self) -> None:
        """Pure: a gate passes when it was claimed, every live check of it passed and nothing
        was found against it. Every failed check is also a finding, filed once."""
        self.findings += failing_findings(self.checks)
        for gate in GATES:
            ok = (
                self.claims[gate].is_claim
                and all(c.status == Status.PASS for c in self.checks if c.gate == gate)
                and not any(f.gate == gate for f in self.findings)
            )
            self.verdicts[gate] = "PASS" if ok else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "review_id": self.review_id,
            "at": self.at,
            "gates": {
                g: {
                    "status": v.lower(),
                    "claim_run_id": self.claims[g].run_id,
                    "findings": [f.title for f in self.findings if f.gate == g],
                }
                for g, v in self.verdicts.items()
            },
            "checks": [c.as_dict() for c in self.checks],
            "findings": [f.__dict__ for f in self.findings],
            "churn": self.churn,
            "evidence": self.evidence,
            "docs": self.docs.__dict__,
        }


def failing_findings(checks: list[Check]) -> list[Finding]:
    """Every failed live check is also a finding, keyed by the check so it is filed once."""
    return [
        Finding(
            f"check:{c.id}",
            c.gate,
            f"{c.id}: expected {c.expected}; found {c.found}",
            c.detail or c.id,
        )
        for c in checks
        if c.status in (Status.FAIL, Status.ERROR)
    ]
