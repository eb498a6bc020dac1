"""The verification flow: preconditions -> facts (before) -> routes -> [proofs] -> teardown
(always) -> facts (after) -> evidence. Its final state matches the verdict.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from pvcheck import judge
from pvcheck.config import (
    MAX_ALLOCATOR_BATCH,
    MAX_ALLOCATOR_CONCURRENCY,
    MAX_ALLOCATOR_ROUNDS,
    Config,
    load_config,
)
from pvcheck.errors import TargetUnreachable
from pvcheck.evidence import render
from pvcheck.records import Check, Status
from pvcheck.report import Report
from pvcheck.statefiles import append_journal
from pvcheck.swarm import Swarm
from tasks.deploy import deploy_proof
from tasks.evidence import publish_verdict, write_evidence_files
from tasks.host import capture_facts, connect_engine, read_precondition_phase, scan_docker_log
from tasks.routes import check_routes
from tasks.teardown import teardown

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "lab" / "pvcheck.toml")


class RunParameters(BaseModel):
    """What the Prefect UI form offers. Caps are the config's hard limits: never raisable."""

    config_path: str = Field(DEFAULT_CONFIG, description="pvcheck TOML config on the worker")
    allocator_batch: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_BATCH)
    allocator_concurrency: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_CONCURRENCY)
    allocator_rounds: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_ROUNDS)

    def overrides(self) -> dict[str, Any]:
        alloc = {
            k: v
            for k, v in {
                "batch": self.allocator_batch,
                "concurrency": self.allocator_concurrency,
                "rounds": self.allocator_rounds,
            }.items()
            if v is not None
        }
        return {"allocator": alloc} if alloc else {}


def new_run_id() -> str:
    return f"pv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unreachable_journal(cfg: Config, run_id: str, exc: Exception) -> None:
    """The only thing written when the target cannot be reached."""
    append_journal(
        cfg.docs.dir / f"JOURNAL-{cfg.docs.phase}.md",
        render("journal_header.md.j2", phase=cfg.docs.phase),
        f"## {utc_now()} — run `{run_id}`: UNREACHABLE\n\n- Target `{cfg.target.name}` "
        f"({cfg.target.docker_host}) could not be reached: {exc}. Nothing was checked.\n",
    )


def preconditions(cfg: Config, done: bool | None, facts_checks: list[Check]) -> list[Check]:
    pvfix = cfg.docs.dir / f"STATUS-{cfg.docs.precondition_phase}.md"
    return [judge.precondition_phase(cfg.docs.precondition_phase, str(pvfix), done), *facts_checks]


def run_deploy_stage(swarm: Swarm, cfg: Config, run_id: str, report: Report) -> list[Check]:
    if cfg.deploy is None:
        report.stages["deploy"] = "skipped: no [deploy] section in the config"
        return [judge.skipped("deploy.stage", "M2", "deploy proof runs", report.stages["deploy"])]
    checks: list[Check] = deploy_proof(swarm, cfg, run_id)
    failed = [c.id for c in checks if c.status not in (Status.PASS, Status.SKIP)]
    skipped = [c.detail for c in checks if c.status == Status.SKIP and not c.not_applicable]
    report.stages["deploy"] = (
        f"fail ({', '.join(failed)})" if failed else (skipped[0] if skipped else "pass")
    )
    return checks


@flow(name="pvcheck-verify", log_prints=False)
def verify(params: RunParameters | None = None) -> State:
    """Verify the host named by the config; write evidence; end Failed when a gate fails."""
    params = params or RunParameters()
    log = get_run_logger()
    cfg = load_config(params.config_path, params.overrides())
    run_id = new_run_id()
    report = Report(run_id, cfg.target.name, str(cfg.source), started_at=utc_now())
    log.info("pvcheck run %s against %s (config %s)", run_id, cfg.target.name, cfg.source)
    started = datetime.now(UTC)
    try:
        swarm = connect_engine(cfg)
    except TargetUnreachable as exc:
        _unreachable_journal(cfg, run_id, exc)
        raise

    try:
        # Read-only stages run concurrently.
        done_f = read_precondition_phase.submit(cfg)
        before_f = capture_facts.submit(swarm, cfg, "before")
        routes_f = check_routes.submit(cfg)
        logs_f = scan_docker_log.submit(
            cfg, started - timedelta(hours=cfg.logs.window_h), datetime.now(UTC)
        )
        before = before_f.result()
        report.facts_before = before
        pre = preconditions(
            cfg,
            done_f.result(),
            [judge.network_matches(cfg.network, before.network)]
            + [judge.service_healthy(s) for s in before.services],
        )
        routes = routes_f.result()
        report.checks += [
            *pre,
            *routes,
            judge.headroom(before.network, cfg.network.headroom_warn_pct),
        ]
        report.logs = logs_f.result()
        report.stages["preconditions"] = (
            "pass" if all(c.status == Status.PASS for c in pre) else "fail"
        )
        report.stages["routes"] = "pass" if all(c.status == Status.PASS for c in routes) else "fail"
        core_down = [
            c.id
            for c, r in zip(routes, cfg.routes, strict=True)
            if r.core and c.status != Status.PASS
        ]
        blocked = [c.id for c in pre if c.status != Status.PASS] + core_down
        if blocked:
            reason = "no new test traffic: fix routing first (" + ", ".join(blocked) + ")"
            report.stages["traffic"] = "blocked"
            log.warning("%s", reason)
            for stage in ("deploy", "allocator"):
                report.stages[stage] = f"skipped: {reason}"
                report.checks.append(judge.skipped(f"{stage}.stage", "M2", "stage runs", reason))
        else:
            report.stages["traffic"] = "allowed"
            report.checks += run_deploy_stage(swarm, cfg, run_id, report)
    finally:
        report.checks.append(teardown(swarm, run_id))
        report.stages["teardown"] = "done"
        after = capture_facts(swarm, cfg, "after")
        report.facts_after = after
        report.checks += [c for c in (judge.service_healthy(s, "after") for s in after.services)]
        report.finished_at = utc_now()
        report.evidence = write_evidence_files(report, cfg)
        publish_verdict(report)

    gates = ", ".join(f"{g.gate} {g.status}" for g in report.gates)
    log.info("verdict %s (%s)", report.verdict, gates)
    if report.verdict == Status.FAIL:
        return Failed(message=f"pvcheck verdict FAIL: {gates}", data=report)
    return Completed(message=f"pvcheck verdict PASS: {gates}", data=report)
