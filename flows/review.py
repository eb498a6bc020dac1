"""The review flow (the Adversary): re-verify each claimed gate from the live host by itself,
compare the host with the numbers the run recorded in its JSON report, hunt for what a builder
run could hide, and write REVIEW, the Adversary findings in BACKLOG and PASS headers in STATUS.
STATUS is read only for the claims (their headers, runs and HOW commands).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from prefect import State, flow, get_run_logger
from prefect.states import Completed, Failed
from pydantic import BaseModel, ConfigDict, Field

from pvcheck import facts, guard, logscan, preconditions, routes
from pvcheck.claims import m1_claim, residue_commands, unexplained_m2_commands
from pvcheck.config import Config, load_config
from pvcheck.evidence import write_review
from pvcheck.pinned import pinned_path
from pvcheck.records import Check, Family, Gate, format_ts
from pvcheck.review import (
    Finding,
    GateClaim,
    ReviewResult,
    compare_evidence,
    parse_claims,
    read_recorded,
)
from pvcheck.seams import Seams
from pvcheck.stacks import list_residue, residue_names
from pvcheck.statefiles import read_state
from pvcheck.swarm import LABEL_RUN
from pvcheck.teardown import Observation as Residue
from pvcheck.teardown import Settings as ResidueSettings
from pvcheck.teardown import judge as judge_residue
from tasks.engine import connect
from tasks.facts import capture_facts
from tasks.guard import guard_proof
from tasks.logs import scan_docker_log
from tasks.preconditions import check_preconditions
from tasks.review import run_cold_commands
from tasks.routes import check_routes


class ReviewParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a stale or made-up field is an error

    config: str = Field(
        "", description="which served config, by its target name (empty: the first)", max_length=63
    )


def live_m1(
    cfg: Config, seams: Seams, health: list[Check], claim: GateClaim
) -> tuple[list[Check], list[Finding]]:
    routes_f = check_routes.submit(seams, routes.Settings.from_config(cfg))
    checks = check_preconditions(seams, preconditions.Settings.from_config(cfg))
    checks += [c for c in health if c.family == Family.SVC] + routes_f.result()
    regenerated = m1_claim(cfg).commands
    findings = []
    if claim.is_claim and claim.commands != [c.command for c in regenerated]:
        findings.append(
            Finding(
                "how:M1",
                Gate.M1,
                "STATUS's M1 HOW commands differ from what pvcheck generates for this config",
                "pvcheck run --config CONFIG  # regenerates the claim",
            )
        )
    checks += run_cold_commands(regenerated, Gate.M1, seams.host)
    return checks, findings


def live_m2(
    cfg: Config, seams: Seams, claim: GateClaim, since: datetime | None
) -> tuple[list[Check], list[Finding]]:
    log = get_run_logger()
    # Any pvcheck run's label, not only the claim's: listed, never removed by a review.
    left = list_residue(seams.swarm, LABEL_RUN)
    names = residue_names(left)
    checks = judge_residue(Residue(left, 0.0), ResidueSettings(run_id=""))
    log.info("docker ps/service/network ls --filter label=%s -> %s", LABEL_RUN, names or "nothing")
    findings = [
        Finding(
            f"residue:{name}",
            Gate.M2,
            f"leftover carrying a pvcheck run label: {name}",
            f"docker ps -a --filter label={LABEL_RUN}",
        )
        for name in names
    ]
    if since is not None:
        window = logscan.Settings.window(
            cfg,
            Family.LOGS.id("after-builder"),
            "the time since the builder's claim",
            since,
            datetime.now(UTC),
        )
        checks += scan_docker_log(seams, window)[1]
    settings = guard.Settings.from_config(cfg, "", canary=False)
    if settings is not None:
        checks += guard_proof(seams, settings)
    if claim.run_id:
        checks += run_cold_commands(residue_commands(cfg, claim.run_id), Gate.M2, seams.host)
        # People paste M2's HOW block too: what pvcheck would not write there is a finding.
        odd = unexplained_m2_commands(cfg, claim.run_id, claim.commands) if claim.is_claim else []
        if odd:
            findings.append(
                Finding(
                    "how:M2",
                    Gate.M2,
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
    paths = cfg.docs.paths
    claims = parse_claims(read_state(paths.status) or "", str(paths.status))
    recorded = read_recorded(paths.report)
    review_id = f"rv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    result = ReviewResult(review_id, "", claims)
    log.info(
        "review %s of %s: claims %s; recorded numbers of run %s (%s)",
        review_id,
        paths.status,
        {g: (c.state, c.run_id) for g, c in claims.items()},
        recorded.run_id if recorded else None,
        paths.report,
    )
    seams = connect(cfg, review_id, with_driver=False)
    live, health = capture_facts(seams, facts.Settings.from_config(cfg), "review")
    m1_checks, m1_findings = live_m1(cfg, seams, health, claims[Gate.M1])
    since = claims[Gate.M2].claimed_at or claims[Gate.M1].claimed_at
    m2_checks, m2_findings = live_m2(cfg, seams, claims[Gate.M2], since)
    result.checks = m1_checks + m2_checks
    if recorded is not None:
        result.findings += compare_evidence(recorded, live.facts)
    result.findings += m1_findings + m2_findings
    result.at = format_ts(datetime.now(UTC))
    result.judge()
    for gate, verdict in result.verdicts.items():
        log.info("gate %s: %s", gate, verdict)
    result.evidence = write_review(result, cfg)
    message = ", ".join(f"{g} {v}" for g, v in result.verdicts.items())
    if result.verdict != "pass":
        return Failed(message=f"pvcheck review: {message}", data=result)
    return Completed(message=f"pvcheck review: {message}", data=result)
