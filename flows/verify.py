"""The verification flow: janitor -> preconditions -> facts (before) -> routes -> deploy proof
-> allocator reproduction -> fresh logs -> upgrade guard -> teardown (always) -> facts (after)
-> evidence. Its final state matches the verdict.

Teardown is layered: a finally in the flow, a direct label sweep if the teardown task cannot
run, Prefect cancellation/crash hooks, and the janitor at the start of the next run.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Completed, Failed
from pydantic import BaseModel, ConfigDict, Field

from pvcheck import judge
from pvcheck.config import (
    MAX_ALLOCATOR_BATCH,
    MAX_ALLOCATOR_CONCURRENCY,
    MAX_ALLOCATOR_ROUNDS,
    Config,
    load_config,
)
from pvcheck.errors import ConfigError, HostBusy, TargetUnreachable
from pvcheck.evidence import render
from pvcheck.hosts import host_for
from pvcheck.pinned import pinned_path
from pvcheck.records import Check, Status, Verdict, format_ts
from pvcheck.report import Report
from pvcheck.runs import EngineLock, HostLock, RunRegistry
from pvcheck.stacks import remove_labelled
from pvcheck.statefiles import append_journal, docs_lock
from pvcheck.swarm import LABEL_RUN, Swarm
from tasks.deploy import deploy_proof, wait_for_quiet_host
from tasks.evidence import publish_artifacts, write_evidence_files
from tasks.host import capture_facts, connect_engine, read_precondition_phase, scan_docker_log
from tasks.proofs import allocator_proof, guard_proof, reap_dead_runs
from tasks.routes import check_routes, recheck_core_routes
from tasks.teardown import teardown

log = logging.getLogger(__name__)


class RunParameters(BaseModel):
    """What the Prefect UI form offers. Caps are the config's hard limits: never raisable."""

    model_config = ConfigDict(extra="forbid")  # a stale or made-up field is an error

    config: str = Field(
        "",
        description="which served config to run, by its target name (empty: the first); "
        "configs are pinned by `pvcheck serve`, never given as a path here",
        max_length=63,
    )
    allocator_batch: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_BATCH)
    allocator_concurrency: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_CONCURRENCY)
    allocator_rounds: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_ROUNDS)
    canary: bool = Field(
        False, description="lab only: make the real allocator log the VIP signature"
    )
    docker_host: str | None = Field(
        None,
        description="verify this engine instead of the config's: unix://…, tcp://… or "
        "ssh://user@host[:port] (validated like the config field)",
        max_length=300,
    )

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
        out: dict[str, Any] = {"allocator": alloc} if alloc else {}
        if self.docker_host:
            out["target"] = {"docker_host": self.docker_host}
        return out


def new_run_id() -> str:
    return f"pv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return format_ts(datetime.now(UTC))


def _unreachable_journal(cfg: Config, run_id: str, exc: Exception) -> None:
    """The only thing written when the target cannot be reached."""
    with docs_lock(cfg.docs.dir):  # the folder's checks, as for every write there
        append_journal(
            cfg.docs.dir / f"JOURNAL-{cfg.docs.phase}.md",
            render("journal_header.md.j2", phase=cfg.docs.phase),
            f"## {utc_now()} — run `{run_id}`: UNREACHABLE\n\n- Target `{cfg.target.name}` "
            f"({cfg.target.docker_host}) could not be reached: {exc}. Nothing was checked.\n",
        )


def _sweep_after_abort(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Cancellation/crash hook: remove what this run created, by its label only."""
    raw = (flow_run.parameters or {}).get("params") or {}
    try:
        # The engine the run used: the config's, or the run's override of it.
        params = RunParameters.model_validate(raw)
        cfg = load_config(pinned_path(params.config), params.overrides())
        swarm = Swarm.for_target(cfg.target)
        left = remove_labelled(swarm, f"{LABEL_RUN}={flow_run.name}", timeout_s=120)
        log.warning("run %s ended %s; swept its label, left: %s", flow_run.name, state.type, left)
    except Exception as exc:  # the next run's janitor is the last layer
        log.warning(
            "run %s: sweep after %s failed (%s); the janitor will reap it",
            flow_run.name,
            state.type,
            exc,
        )


def _teardown(swarm: Swarm, run_id: str) -> Check:
    try:
        result: Check = teardown(swarm, run_id)
        return result
    except BaseException:
        # The engine may be shutting down (SIGINT/SIGTERM): sweep directly, then re-check.
        left = remove_labelled(swarm, f"{LABEL_RUN}={run_id}", timeout_s=120)
        return judge.residue(left, f"{LABEL_RUN}={run_id}")


class Verification:
    """One run's state while the flow walks its stages."""

    def __init__(self, cfg: Config, run_id: str, params: RunParameters) -> None:
        self.cfg, self.run_id, self.params = cfg, run_id, params
        self.report = Report(run_id, cfg.target.name, str(cfg.source), started_at=utc_now())
        self.started = datetime.now(UTC)
        self.log = get_run_logger()

    def read_only_stage(self, swarm: Swarm) -> bool:
        """Preconditions, facts, routes and the log window, concurrently; True when test
        traffic may start."""
        cfg, report = self.cfg, self.report
        done_f = read_precondition_phase.submit(cfg)
        before_f = capture_facts.submit(swarm, cfg, "before")
        routes_f = check_routes.submit(cfg)
        window_start = self.started - timedelta(hours=cfg.logs.window_h)
        logs_f = scan_docker_log.submit(cfg, window_start, datetime.now(UTC))
        before = before_f.result()
        report.facts_before = before
        pvfix = cfg.docs.precondition_status
        pre = [
            judge.precondition_phase(cfg.docs.precondition_phase, str(pvfix), done_f.result()),
            judge.network_matches(cfg.network, before.network),
            *(judge.service_healthy(s) for s in before.services),
        ]
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
        core = {f"route.{r.name}" for r in cfg.routes if r.core}
        blocked = [c.id for c in pre if c.status != Status.PASS]
        blocked += [c.id for c in routes if c.id in core and c.status != Status.PASS]
        if not blocked:
            report.stages["traffic"] = "allowed"
            return True
        reason = "no new test traffic: fix routing first (" + ", ".join(blocked) + ")"
        report.stages["traffic"] = "blocked"
        self.log.warning("%s", reason)
        self._skip_traffic_stages(reason)
        return False

    def _skip_traffic_stages(self, reason: str) -> None:
        for stage, check_id in (("deploy", "deploy.stage"), ("allocator", "alloc.stage")):
            self.report.stages[stage] = f"skipped: {reason}"
            self.report.checks.append(judge.skipped(check_id, "M2", "stage runs", reason))

    def quiet_host_stage(self, swarm: Swarm) -> bool:
        """True when no other recipe run, Drone build or sweep is active (waiting within
        bounds); otherwise nothing is created and the run ends INCOMPLETE."""
        if self.cfg.deploy is None:
            return True
        quiet = wait_for_quiet_host(swarm, self.cfg)
        self.report.checks.append(quiet)
        if quiet.status == Status.PASS:
            return True
        self.report.stages["traffic"] = "held: another run or sweep is active"
        self._skip_traffic_stages(f"no new test traffic: {quiet.detail}")
        return False

    def deploy_stage(self, swarm: Swarm) -> None:
        report = self.report
        if self.cfg.deploy is None:
            report.stages["deploy"] = "skipped: no [deploy] section in the config"
            report.checks.append(
                judge.skipped("deploy.stage", "M2", "deploy proof runs", report.stages["deploy"])
            )
            return
        checks: list[Check] = deploy_proof(swarm, self.cfg, self.run_id)
        report.checks += checks
        report.stages["deploy"] = _stage_outcome(checks)

    def allocator_stage(self, swarm: Swarm) -> None:
        report = self.report
        routes = recheck_core_routes(self.cfg, "allocator")
        report.checks.append(routes)
        if routes.status != Status.PASS:
            stopped = judge.traffic_stopped("alloc.stage", "the reproduction runs", routes)
            report.stages["allocator"] = stopped.detail
            report.checks.append(stopped)
            return
        started = datetime.now(UTC)
        checks, result = allocator_proof(swarm, self.cfg, self.run_id)
        report.checks += checks
        report.stages["allocator"] = _stage_outcome(checks)
        if result is not None:
            report.extra["allocator"] = result.as_dict()
            scan = scan_docker_log(self.cfg, started, datetime.now(UTC))
            report.checks.append(judge.fresh_logs("logs.fresh-allocator", scan, "the reproduction"))

    def finish_logs_and_guard(self, swarm: Swarm, canary: bool) -> None:
        scan = scan_docker_log(self.cfg, self.started, datetime.now(UTC))
        self.report.checks.append(judge.fresh_logs("logs.fresh-run", scan, "this run"))
        # The canary runs last, after the run's own log window has been judged, and never
        # when test traffic was held back.
        guard = guard_proof(swarm, self.cfg, self.run_id, canary)
        self.report.checks += guard
        self.report.stages["guard"] = _stage_outcome(guard)

    def teardown_stage(self, swarm: Swarm) -> bool:
        """Remove what this run made; True when nothing is left."""
        label = f"{LABEL_RUN}={self.run_id}"
        try:
            residue = _teardown(swarm, self.run_id)
        except Exception as exc:
            # The host is gone or broken (ssh lost, engine down): the run stays recorded as
            # started and not finished, so the next run's janitor removes what it left.
            residue = judge.teardown_unchecked(label, str(exc))
        self.report.checks.append(residue)
        clean = residue.status == Status.PASS
        self.report.stages["teardown"] = "clean" if clean else f"left: {residue.found}"
        return clean

    def after_facts(self, swarm: Swarm) -> None:
        """Host facts after the run; facts the host could not give are an error check."""
        if swarm.lost:
            error = f"{self.cfg.target.docker_host} was lost during the run"
        else:
            try:
                after = capture_facts(swarm, self.cfg, "after")
            except Exception as exc:
                error = str(exc)
            else:
                self.report.facts_after = after
                self.report.checks += [judge.service_healthy(s, "after") for s in after.services]
                return
        self.report.checks.append(
            Check("facts.after", "M1", Status.ERROR, "host facts after the run", error)
        )


def _stage_outcome(checks: list[Check]) -> str:
    failed = [c.id for c in checks if c.status in (Status.FAIL, Status.ERROR)]
    skipped = [c.detail for c in checks if c.status == Status.SKIP and not c.not_applicable]
    if failed:
        return f"fail ({', '.join(failed)})"
    return skipped[0] if skipped else "pass"


def _run_name() -> str:
    return new_run_id()


@flow(
    name="pvcheck-verify",
    flow_run_name=_run_name,
    log_prints=False,
    on_cancellation=[_sweep_after_abort],
    on_crashed=[_sweep_after_abort],
)
def verify(params: RunParameters | None = None) -> State:
    """Verify the host named by the config; write evidence; end Failed when a gate fails."""
    params = params or RunParameters()
    cfg = load_config(pinned_path(params.config), params.overrides())
    if params.canary and (cfg.lab is None or params.docker_host):
        raise ConfigError(
            str(cfg.source),
            "canary",
            "the canary runs only against the built-in lab's own engine (a lab config, no "
            "target override)",
        )
    run_id = str(runtime_flow_run.name or new_run_id())
    try:
        with HostLock(cfg.target.state_dir, cfg.target.docker_host):
            return _verify_locked(cfg, run_id, params)
    except HostBusy as exc:
        # Another run (the UI's, the nightly one, another machine's) works on this engine:
        # this one steps aside.
        get_run_logger().warning("%s", exc)
        return Cancelled(message=str(exc))


def _verify_locked(cfg: Config, run_id: str, params: RunParameters) -> State:
    log = get_run_logger()
    log.info("pvcheck run %s against %s (config %s)", run_id, cfg.target.name, cfg.source)
    try:
        swarm = connect_engine(cfg)
    except TargetUnreachable as exc:
        _unreachable_journal(cfg, run_id, exc)
        raise
    with EngineLock(swarm, run_id):
        return _verify_on_engine(cfg, run_id, params, swarm)


def _verify_on_engine(cfg: Config, run_id: str, params: RunParameters, swarm: Swarm) -> State:
    run = Verification(cfg, run_id, params)
    report, log = run.report, run.log
    report.extra["target_via"] = host_for(cfg.target).describe()
    registry = RunRegistry(cfg.target.state_dir, cfg.target.docker_host)
    report.checks.append(reap_dead_runs(swarm, cfg))
    registry.start(run_id)
    try:
        traffic = run.read_only_stage(swarm) and run.quiet_host_stage(swarm)
        if traffic:
            run.deploy_stage(swarm)
            run.allocator_stage(swarm)
        run.finish_logs_and_guard(swarm, canary=params.canary and traffic)
    except BaseException as exc:
        # An interrupted run proves nothing: it must not leave a claim behind.
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        for gate in ("M1", "M2"):
            report.checks.append(
                Check(f"run.aborted.{gate}", gate, Status.ERROR, "the run completes", why)
            )
        report.stages["aborted"] = why
        raise
    finally:
        # Evidence is written whatever the host does from here on.
        if run.teardown_stage(swarm):
            registry.finish(run_id)
        run.after_facts(swarm)
        report.finished_at = utc_now()
        report.evidence = write_evidence_files(report, cfg)
        publish_artifacts(report)

    gates = ", ".join(f"{g.gate} {g.status}" for g in report.gates)
    log.info("verdict %s (%s) %s", report.verdict, gates, report.incomplete_reason)
    return final_state(report)


def final_state(report: Report) -> State:
    """The flow run's state follows the verdict; INCOMPLETE is a failed-type state of its own
    name, so the nightly "failed or crashed" automation reports it."""
    gates = ", ".join(f"{g.gate} {g.status}" for g in report.gates)
    if report.verdict == Verdict.FAIL:
        return Failed(message=f"pvcheck verdict FAIL: {gates}", data=report)
    if report.verdict == Verdict.INCOMPLETE:
        return Failed(
            name="Incomplete",
            message=f"pvcheck verdict INCOMPLETE: {report.incomplete_reason}",
            data=report,
        )
    return Completed(message=f"pvcheck verdict PASS: {gates}", data=report)
