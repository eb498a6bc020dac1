"""The review flow (the Adversary): re-verify each claimed gate from the live host by itself,
compare with what the builder wrote, hunt for what a builder run could hide, and write
REVIEW, the Adversary findings in BACKLOG, and PASS headers in STATUS.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.states import Completed, Failed
from pydantic import BaseModel, ConfigDict, Field

from pvcheck import judge
from pvcheck.claims import m1_claim, residue_commands, unexplained_m2_commands
from pvcheck.config import Config, load_config
from pvcheck.evidence import render
from pvcheck.facts import HostFacts
from pvcheck.guard import check_guard
from pvcheck.hosts import host_for
from pvcheck.logscan import LogScan
from pvcheck.pinned import pinned_path
from pvcheck.records import GATES, Check, Status, format_ts
from pvcheck.review import (
    Finding,
    GateClaim,
    compare_evidence,
    mark_gate_passed,
    merge_findings,
    parse_claims,
    parse_evidence,
    parse_findings,
)
from pvcheck.safeio import atomic_write
from pvcheck.stacks import list_residue, residue_names
from pvcheck.statefiles import (
    append_journal,
    docs_lock,
    read_state,
    section_body,
    update_sections,
)
from pvcheck.swarm import LABEL_RUN, Swarm
from tasks.host import capture_facts, connect_engine, read_precondition_phase, scan_docker_log
from tasks.review import run_cold_commands
from tasks.routes import check_routes


class ReviewParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a stale or made-up field is an error

    config: str = Field(
        "", description="which served config, by its target name (empty: the first)", max_length=63
    )


@dataclass
class ReviewResult:
    review_id: str
    at: str
    claims: dict[str, GateClaim]
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return (
            "pass" if self.verdicts and all(v == "PASS" for v in self.verdicts.values()) else "fail"
        )

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
            "evidence": self.evidence,
        }


def _failing_findings(checks: list[Check]) -> list[Finding]:
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


def live_m1(cfg: Config, facts: HostFacts, claim: GateClaim) -> tuple[list[Check], list[Finding]]:
    routes_f = check_routes.submit(cfg)
    done = read_precondition_phase(cfg)
    pvfix = cfg.docs.precondition_status
    checks = [
        judge.precondition_phase(cfg.docs.precondition_phase, str(pvfix), done),
        judge.network_matches(cfg.network, facts.network),
        *(judge.service_healthy(s) for s in facts.services),
        *routes_f.result(),
    ]
    regenerated = m1_claim(cfg).commands
    findings = []
    if claim.is_claim and claim.commands != [c.command for c in regenerated]:
        findings.append(
            Finding(
                "how:M1",
                "M1",
                "STATUS's M1 HOW commands differ from what pvcheck generates for this config",
                "pvcheck run --config CONFIG  # regenerates the claim",
            )
        )
    checks += run_cold_commands(regenerated, "M1", host_for(cfg.target))
    return checks, findings


def live_m2(
    cfg: Config, swarm: Swarm, claim: GateClaim, since: datetime | None
) -> tuple[list[Check], list[Finding]]:
    log = get_run_logger()
    findings = []
    left = list_residue(swarm, LABEL_RUN)  # any pvcheck run's label, not only the claim's
    names = residue_names(left)
    checks = [judge.residue(left, f"{LABEL_RUN} (any run)")]
    log.info("docker ps/service/network ls --filter label=%s -> %s", LABEL_RUN, names or "nothing")
    for name in names:
        findings.append(
            Finding(
                f"residue:{name}",
                "M2",
                f"leftover carrying a pvcheck run label: {name}",
                f"docker ps -a --filter label={LABEL_RUN}",
            )
        )
    if since is not None:
        scan: LogScan = scan_docker_log(cfg, since, datetime.now(UTC))
        checks.append(
            judge.fresh_logs("logs.after-builder", scan, "the time since the builder's claim")
        )
    if cfg.guard is not None:
        checks += check_guard(cfg.guard, host_for(cfg.target))[0]
    if claim.run_id:
        checks += run_cold_commands(residue_commands(cfg, claim.run_id), "M2", host_for(cfg.target))
        # People paste M2's HOW block too: what pvcheck would not write there is a finding.
        odd = unexplained_m2_commands(cfg, claim.run_id, claim.commands) if claim.is_claim else []
        if odd:
            findings.append(
                Finding(
                    "how:M2",
                    "M2",
                    "STATUS's M2 HOW commands differ from what pvcheck generates: "
                    + "; ".join(o[:120] for o in odd[:3]),
                    "pvcheck run --config CONFIG  # regenerates the claim",
                )
            )
    return checks, findings


@flow(name="pvcheck-review", log_prints=False)
def review(params: ReviewParameters | None = None) -> State:
    params = params or ReviewParameters()
    cfg = load_config(pinned_path(params.config))
    log = get_run_logger()
    docs, phase = cfg.docs.dir, cfg.docs.phase
    status_path = docs / f"STATUS-{phase}.md"
    status_text = read_state(status_path) or ""
    claims = parse_claims(status_text, str(status_path))
    recorded = parse_evidence(status_text, str(status_path))
    result = ReviewResult(f"rv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}", "", claims)
    log.info(
        "review %s of %s: claims %s",
        result.review_id,
        status_path,
        {g: (c.state, c.run_id) for g, c in claims.items()},
    )
    swarm = connect_engine(cfg)
    facts = capture_facts(swarm, cfg, "review")
    m1_checks, m1_findings = live_m1(cfg, facts, claims["M1"])
    since = claims["M2"].claimed_at or claims["M1"].claimed_at
    m2_checks, m2_findings = live_m2(cfg, swarm, claims["M2"], since)
    result.checks = m1_checks + m2_checks
    result.findings = compare_evidence(recorded, facts) + m1_findings + m2_findings
    result.findings += _failing_findings(result.checks)
    result.at = format_ts(datetime.now(UTC))
    for gate in GATES:
        ok = (
            claims[gate].is_claim
            and all(c.status == Status.PASS for c in result.checks if c.gate == gate)
            and not any(f.gate == gate for f in result.findings)
        )
        result.verdicts[gate] = "PASS" if ok else "FAIL"
        log.info("gate %s: %s", gate, result.verdicts[gate])
    result.evidence = write_review(result, cfg)
    message = ", ".join(f"{g} {v}" for g, v in result.verdicts.items())
    if result.verdict != "pass":
        return Failed(message=f"pvcheck review: {message}", data=result)
    return Completed(message=f"pvcheck review: {message}", data=result)


def write_review(result: ReviewResult, cfg: Config) -> dict[str, str]:
    docs, phase = cfg.docs.dir, cfg.docs.phase
    paths = {
        k: docs / f"{k.upper()}-{phase}.md" for k in ("status", "review", "backlog", "journal")
    }
    sections = {}
    for gate in GATES:
        claim = result.claims[gate]
        checks = [c for c in result.checks if c.gate == gate]
        findings = [f for f in result.findings if f.gate == gate]
        repro = [
            c.detail for c in checks if c.status != Status.PASS and c.id.startswith("review.how")
        ]
        repro += [f.repro for f in findings]
        sections[f"review-{gate}"] = render(
            "review_gate.md.j2",
            gate=gate,
            title=GATES[gate],
            verdict=result.verdicts[gate],
            at=result.at,
            claim=claim,
            review_id=result.review_id,
            checks=checks,
            findings=findings,
            repro=repro,
        )
    with docs_lock(docs):
        backlog_text = read_state(paths["backlog"])
        items = merge_findings(
            parse_findings(
                section_body(backlog_text or "", "adversary-findings", str(paths["backlog"]))
            ),
            result.findings,
            result.at,
        )
        status_text = read_state(paths["status"])
        update_sections(paths["review"], render("review_header.md.j2", phase=phase), sections)
        update_sections(
            paths["backlog"],
            render("backlog_header.md.j2", phase=phase),
            {"adversary-findings": render("backlog_adversary.md.j2", items=items)},
        )
        if status_text is not None:
            # Only the claim this review verified gets its PASS header: re-read under the lock.
            current = parse_claims(status_text, str(paths["status"]))
            new = status_text
            for gate, verdict in result.verdicts.items():
                reviewed = result.claims[gate]
                same_claim = (current[gate].run_id, current[gate].claimed_at) == (
                    reviewed.run_id,
                    reviewed.claimed_at,
                )
                if verdict == "PASS" and same_claim:
                    new = mark_gate_passed(new, gate, result.at, str(paths["status"]))
            if new != status_text:
                atomic_write(paths["status"], new)
        entry = f"## {result.at} — review `{result.review_id}`: " + ", ".join(
            f"{g} {v}" for g, v in result.verdicts.items()
        )
        entry += "".join(f"\n- finding: {f.title}" for f in result.findings)
        append_journal(paths["journal"], render("journal_header.md.j2", phase=phase), entry + "\n")
    return {k: str(v) for k, v in paths.items()}
