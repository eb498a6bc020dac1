"""The independent review: compare what the builder claimed (read by pvcheck.protocol) with
what the host shows now, and judge each gate. Comparing and judging are pure; the review flow
does the I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pvcheck.claims import ColdCommand, differing_commands
from pvcheck.errors import StateFileError
from pvcheck.history import read_history
from pvcheck.hostfacts import HostFacts, NetworkFacts
from pvcheck.protocol import GateClaim, parse_claims
from pvcheck.records import FIGURES, GATES, Check, Gate, Status, Verdict
from pvcheck.reportmodel import ReportDocument, refusal
from pvcheck.reviewrecord import Finding, ReviewResult
from pvcheck.safeio import read_capped
from pvcheck.seams import Seams
from pvcheck.stacks import list_residue, residue_names
from pvcheck.statefiles import DocsPaths, read_state, section_body, section_digest
from pvcheck.swarm import LABEL_RUN, LABEL_STACK


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
    status_digests: dict[str, str] = field(default_factory=dict)  # STATUS sections as written
    adopted: str = ""  # the harness run the deploy proof adopted (none deployed)
    adopted_digest: str = ""  # sha256 of its results.json as the run read it


MAX_REPORT_BYTES = 16 * 1024 * 1024
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


def recorded_from_json(doc: Any, path: str) -> Recorded:
    """Pure: the numbers of a run's JSON report, read through the report's model
    (pvcheck.reportmodel); a report pvcheck did not write is refused, naming the field."""
    if not isinstance(doc, dict) or not isinstance(doc.get("run_id"), str):
        raise StateFileError(path, "not a pvcheck run report (no run_id)")
    try:
        report = ReportDocument.model_validate(doc)
    except ValidationError as exc:
        where, why = refusal(exc)
        raise StateFileError(path, f"field {where}: {why}; not a report pvcheck wrote") from None
    after = report.facts.after
    net = after.network if after else None
    alloc = report.allocator
    logs = report.run_logs
    return Recorded(
        report.run_id,
        {fact: str(getattr(net, key)) for fact, key in _NETWORK_FACTS.items()} if net else {},
        {s.name: f"{s.running}/{s.desired}" for s in after.services} if after else {},
        net.used if net else None,
        net.per_service if net else None,
        net.containers if net else 0,
        list(report.deploy.stacks),
        # A figure absent from the report (one of an older version) is compared as absent.
        {k: getattr(alloc, k) for k in FIGURES if k in alloc.model_fields_set} if alloc else None,
        (logs.since, logs.until) if logs else None,
        tuple(logs.probe_ids) if logs else (),
        dict(report.docs.status_digests),
        report.deploy.adopted.run if report.deploy.adopted else "",
        report.deploy.adopted.digest if report.deploy.adopted else "",
    )


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


def judge_review(result: ReviewResult) -> None:
    """Pure: a gate passes when it was claimed, every live check of it passed and nothing
    was found against it. Every failed check is also a finding, filed once."""
    result.findings += failing_findings(result.checks)
    for gate in GATES:
        ok = (
            result.claims[gate].is_claim
            and all(c.status == Status.PASS for c in result.checks if c.gate == gate)
            and not any(f.gate == gate for f in result.findings)
        )
        result.verdicts[gate] = Verdict.PASS if ok else Verdict.FAIL


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


# --- the stage -------------------------------------------------------------------------------
# The review's own part of the Adversary's run: what the builder's report and STATUS say,
# what the host holds now, and the findings between them. The flow sequences it with the
# other stages' live checks (preconditions, routes, facts, logs, guard, cold commands).
@dataclass(frozen=True)
class Inputs:
    """What the builder wrote: STATUS's claims, the run's JSON report, the history."""

    claims: dict[str, GateClaim]
    recorded: Recorded | None
    history: list[dict[str, Any]]
    status: str = ""  # STATUS's text


def read_inputs(paths: DocsPaths) -> Inputs:
    status = read_state(paths.status) or ""
    claims = parse_claims(status, str(paths.status))
    history = read_history(paths.history, limit=200)
    return Inputs(claims, read_recorded(paths.report), history, status)


def status_edit_findings(status: str, path: str, recorded: Recorded) -> list[Finding]:
    """Pure: STATUS's figures and verdict are the run's only while their sections are the text
    the run wrote (its report holds their digests); a figure changed by hand is a finding on
    both gates, whose claims stand on it."""
    changed = []
    for name, digest in recorded.status_digests.items():
        body = section_body(status, name, path)
        if body is None:
            changed.append(f"section {name} is gone")
        elif section_digest(body) != digest:
            changed.append(f"section {name} is not the text run {recorded.run_id} wrote")
    if not changed:
        return []
    # A run whose STATUS write failed after its report was written looks the same: said.
    title = (
        f"STATUS is not what its run wrote: {'; '.join(changed)} (edited by hand, or that "
        "run could not write STATUS)"
    )
    repro = f"git log -p -- {path}  # who changed it; a new run (pvcheck run) writes it again"
    return [Finding(f"status-edit:{gate}", gate, title, repro) for gate in Gate]


@dataclass(frozen=True)
class Observation:
    """The host now: anything carrying any pvcheck run's label, and what is left of the
    deploy proof's stacks (by stack label)."""

    left: dict[str, list[str]]
    stacks_left: dict[str, list[str]]  # stack -> its objects still present


def gather(seams: Seams, recorded: Recorded | None) -> Observation:
    """Listed once per review and never removed: a review only looks."""
    left = list_residue(seams.swarm, LABEL_RUN)
    stacks = recorded.deploy_stacks if recorded is not None else []
    stacks_left = {
        stack: residue_names(list_residue(seams.swarm, f"{LABEL_STACK}={stack}"))
        for stack in stacks
    }
    return Observation(left, stacks_left)


def residue_findings(obs: Observation) -> list[Finding]:
    """Pure: a leftover of any pvcheck run, and a deploy-proof stack that is not gone."""
    findings = [
        Finding(
            f"residue:{name}",
            Gate.M2,
            f"leftover carrying a pvcheck run label: {name}",
            f"docker ps -a --filter label={LABEL_RUN}",
        )
        for name in residue_names(obs.left)
    ]
    findings += [
        Finding(
            f"deploy:{stack}:{name}",
            Gate.M2,
            f"the deploy proof's stack {stack} is not gone: {name}",
            f"docker stack ps {stack}",
        )
        for stack, names in obs.stacks_left.items()
        for name in names
    ]
    return findings


def how_findings(gate: Gate, claim: GateClaim, regenerated: list[ColdCommand]) -> list[Finding]:
    """Pure: STATUS's HOW commands against the ones pvcheck generates for this config/run."""
    odd = differing_commands(claim.commands, regenerated) if claim.is_claim else []
    if not odd:
        return []
    return [
        Finding(
            f"how:{gate}",
            gate,
            f"STATUS's {gate} HOW commands differ from what pvcheck generates for this "
            "config and run: " + "; ".join(o[:120] for o in odd[:3]),
            "pvcheck run --config CONFIG  # regenerates the claim",
        )
    ]


def report_run_findings(claim: GateClaim, recorded: Recorded | None) -> list[Finding]:
    """Pure: the JSON report must be of the run the M2 claim names."""
    if not claim.is_claim or recorded is None or recorded.run_id == claim.run_id:
        return []
    return [
        Finding(
            "report:run",
            Gate.M2,
            f"the JSON report is of run {recorded.run_id}, the M2 claim of run {claim.run_id}",
            "pvcheck run --config CONFIG  # writes claim and report together",
        )
    ]


def compare_with_report(
    recorded: Recorded, live: HostFacts, obs: Observation, history: list[dict[str, Any]]
) -> Comparison:
    """Pure: the host now against the run's JSON report (endpoints attributed per service;
    services carrying a pvcheck run label are ours), and the report's figures against the
    run's history record."""
    compared = compare_evidence(recorded, live, set(obs.left["services"]))
    findings = compared.findings + compare_allocator(recorded, history)
    findings += compare_totals(recorded, history)
    return Comparison(findings, compared.churn)
