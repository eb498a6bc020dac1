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

from pvcheck import facts, guard, logscan, preconditions, routes, runlog
from pvcheck import review as review_stage
from pvcheck.busy import explain_collisions, step_aside, this_run
from pvcheck.claims import m1_claim, m2_commands
from pvcheck.config import Config, load_config
from pvcheck.deploy import adopt as adoption
from pvcheck.errors import HostBusy
from pvcheck.evidence import write_review
from pvcheck.flows.params import TARGET, Host, served_config
from pvcheck.protocol import GateClaim
from pvcheck.records import Check, Family, Gate, Status, Verdict, format_ts
from pvcheck.review import (
    Recorded,
    judge_review,
)
from pvcheck.reviewrecord import Finding, ReviewResult
from pvcheck.runs import HostLock
from pvcheck.seams import Seams
from pvcheck.tasks.deploy import adopt_run
from pvcheck.tasks.engine import connect
from pvcheck.tasks.facts import capture_facts
from pvcheck.tasks.guard import guard_proof
from pvcheck.tasks.logs import scan_docker_log
from pvcheck.tasks.preconditions import check_preconditions
from pvcheck.tasks.review import observe_host, run_cold_commands
from pvcheck.tasks.routes import check_routes
from pvcheck.teardown import Observation as Residue
from pvcheck.teardown import Settings as ResidueSettings
from pvcheck.teardown import judge as judge_residue


def live_m1(
    cfg: Config, seams: Seams, health: list[Check], claim: GateClaim
) -> tuple[list[Check], list[Finding]]:
    routes_f = check_routes.submit(seams, routes.Settings.from_config(cfg))
    checks = check_preconditions(seams, preconditions.Settings.from_config(cfg))
    checks += [c for c in health if c.family == Family.SVC] + routes_f.result()
    regenerated = m1_claim(cfg).commands
    checks += run_cold_commands(regenerated, Gate.M1, seams.host)
    return checks, review_stage.how_findings(Gate.M1, claim, regenerated)


def live_m2(
    cfg: Config,
    seams: Seams,
    claim: GateClaim,
    since: datetime | None,
    recorded: Recorded | None,
    host_now: review_stage.Observation,
) -> tuple[list[Check], list[Finding]]:
    """M2's live checks, and the review's own findings on what the host holds now."""
    checks = judge_residue(Residue(host_now.left, 0.0), ResidueSettings(run_id=""))
    findings = review_stage.residue_findings(host_now)
    findings += review_stage.report_run_findings(claim, recorded)
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
        # The claim's commands, regenerated from the config and the run's own JSON report
        # (its log window), and run; what STATUS shows instead is a finding.
        same_run = recorded is not None and recorded.run_id == claim.run_id
        run_window = recorded.run_logs if recorded is not None and same_run else None
        ours = recorded.probe_ids if recorded is not None and same_run else ()
        adopted = recorded.adopted if recorded is not None and same_run else ""
        digest = recorded.adopted_digest if recorded is not None and same_run else ""
        regenerated = m2_commands(cfg, claim.run_id, run_window, ours=ours, adopted=adopted)
        checks += run_cold_commands(regenerated, Gate.M2, seams.host)
        if adopted:
            checks += _readopt(cfg, seams, adopted, digest)
        findings += review_stage.how_findings(Gate.M2, claim, regenerated)
    return checks, findings


def _readopt(cfg: Config, seams: Seams, run: str, digest: str) -> list[Check]:
    """The run the claim adopted, judged again from the host now (read only): its results
    still pass, are the bytes the run read, and its recipe's stacks are still gone."""
    expected = f"harness run {run}, which the claim adopted, judged again"
    try:
        settings = adoption.Settings.from_config(cfg, run)
        drone = adoption.drone_client(cfg, run)  # its token too: the build is asked again
    except Exception as exc:  # a token unset or not loadable: this check errs, not the review
        return [Check(Family.DEPLOY.id("adopted"), Gate.M2, Status.ERROR, expected,
                      "not judged", f"{type(exc).__name__}: {exc}")]  # fmt: skip
    checks, now = adopt_run(seams, settings, drone)
    if now.digest != digest:
        checks.append(
            Check(
                Family.DEPLOY.id("adopted-results"),
                Gate.M2,
                Status.FAIL,
                f"harness run {run}'s results.json as the claim's run read it (sha256 {digest})",
                f"sha256 {now.digest or 'unread'}",
                f"{now.results}: changed since the claim",
            )
        )
    return checks


@flow(name="pvcheck-review", log_prints=False)
def review(target: Host = TARGET) -> State:
    """Re-verify the claimed gates from the live host and the run's JSON report (the
    Adversary); append the verdicts to REVIEW; end Failed when a gate fails."""
    runlog.install()
    cfg = load_config(served_config(target))
    review_id = f"rv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    me, started = this_run(review_id), datetime.now(UTC)
    try:
        # Not beside a verification run: its throwaway stacks would read as leftovers.
        with HostLock(cfg.target.state_dir, cfg.target.docker_host, me, cfg.target.ssh.config_file):
            state = _review(cfg, review_id)
        explain_collisions(me, started)
        return state
    except HostBusy as exc:
        return step_aside(exc)


def _review(cfg: Config, review_id: str) -> State:
    log = get_run_logger()
    paths = cfg.docs.paths
    inputs = review_stage.read_inputs(paths)
    claims, recorded = inputs.claims, inputs.recorded
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
    host_now = observe_host(seams, recorded)
    m2_checks, m2_findings = live_m2(cfg, seams, claims[Gate.M2], since, recorded, host_now)
    result.checks = m1_checks + m2_checks
    if recorded is not None:
        compared = review_stage.compare_with_report(recorded, live.facts, host_now, inputs.history)
        for line in compared.churn:
            log.info("churn since run %s (not pvcheck's): %s", recorded.run_id, line)
        result.findings += compared.findings
        result.churn = compared.churn
        result.findings += review_stage.status_edit_findings(
            inputs.status, str(paths.status), recorded
        )
    result.findings += m1_findings + m2_findings
    result.at = format_ts(datetime.now(UTC))
    judge_review(result)
    for gate, verdict in result.verdicts.items():
        log.info("gate %s: %s", gate, verdict.label)
    written = write_review(result, cfg)
    result.evidence, result.docs = written.paths, written.docs
    for line in written.docs.lines():
        log.warning("%s", line)
    message = ", ".join(f"{g} {v.label}" for g, v in result.verdicts.items())
    if result.verdict != Verdict.PASS:
        return Failed(message=f"pvcheck review: {message}", data=result)
    return Completed(message=f"pvcheck review: {message}", data=result)
