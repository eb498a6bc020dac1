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
from prefect.states import Completed, Failed
from pydantic import BaseModel, ConfigDict, Field

from pvcheck import (
    allocator,
    deploy,
    facts,
    guard,
    logscan,
    metrics,
    preconditions,
    routes,
    runlog,
    teardown,
)
from pvcheck.busy import explain_collisions, step_aside, this_run
from pvcheck.config import (
    MAX_ALLOCATOR_BATCH,
    MAX_ALLOCATOR_CONCURRENCY,
    MAX_ALLOCATOR_ROUNDS,
    Config,
    load_config,
)
from pvcheck.deploy import adopt as adoption
from pvcheck.errors import ConfigError, HostBusy, TargetUnreachable
from pvcheck.evidence import require_writable_docs, write_unreachable
from pvcheck.flows.params import (
    ADOPT,
    BATCH,
    CANARY,
    CONCURRENCY,
    FORM,
    ROUNDS,
    TARGET,
    TITLES,
    AdoptRun,
    Batch,
    Concurrency,
    Host,
    Rounds,
    served_config,
)
from pvcheck.pinned import pinned_path
from pvcheck.records import (
    Check,
    Family,
    Gate,
    Outcome,
    Stage,
    StageOutcome,
    Status,
    Verdict,
    format_ts,
    skipped,
    stage_outcome,
)
from pvcheck.report import Report
from pvcheck.runs import EngineLock, HostLock, RunRegistry
from pvcheck.seams import Seams
from pvcheck.swarm import Swarm
from pvcheck.tasks.allocator import allocator_proof
from pvcheck.tasks.deploy import adopt_run, deploy_proof, wait_for_quiet_host
from pvcheck.tasks.engine import connect
from pvcheck.tasks.evidence import publish_artifacts, write_evidence_files
from pvcheck.tasks.facts import capture_facts
from pvcheck.tasks.guard import guard_proof
from pvcheck.tasks.logs import scan_docker_log
from pvcheck.tasks.preconditions import check_preconditions
from pvcheck.tasks.routes import check_routes, recheck_core_routes
from pvcheck.tasks.teardown import reap_dead_runs
from pvcheck.tasks.teardown import teardown as teardown_task
from pvcheck.wiring import open_engine

log = logging.getLogger(__name__)


class RunParameters(BaseModel):
    """One run's choices, as the flow's parameters give them. Caps are the config's hard
    limits: never raisable."""

    model_config = ConfigDict(extra="forbid")  # a stale or made-up field is an error

    config: str = Field("", max_length=63)  # a pinned config's target name, never a path
    allocator_batch: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_BATCH)
    allocator_concurrency: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_CONCURRENCY)
    allocator_rounds: int | None = Field(None, ge=1, le=MAX_ALLOCATOR_ROUNDS)
    canary: bool = False
    adopt: AdoptRun = ""

    @staticmethod
    def form(cfg: Config) -> dict[str, Any]:
        """The flow's parameters with the config's own values: what the served form shows and
        what `pvcheck run` passes (a parameter left out would take the flow's default)."""
        return {
            "target": cfg.target.name,
            "allocator_batch": cfg.allocator.batch,
            "allocator_concurrency": cfg.allocator.concurrency,
            "allocator_rounds": cfg.allocator.rounds,
            "canary": False,
            "adopt": "",
        }

    @classmethod
    def from_flow(cls, parameters: dict[str, Any]) -> RunParameters:
        """From the flow run's parameters (the UI form's names)."""
        flat = dict(parameters)
        flat["config"] = flat.pop("target", "")
        return cls.model_validate(flat)

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
        return out


def new_run_id() -> str:
    return f"pv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return format_ts(datetime.now(UTC))


def _sweep_after_abort(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Cancellation/crash hook: remove what this run created, by its label only."""
    try:
        # The engine the run used: the config's, or the run's override of it.
        params = RunParameters.from_flow(flow_run.parameters or {})
        cfg = load_config(pinned_path(params.config), params.overrides())
        obs = teardown.sweep(open_engine(cfg.target), teardown.Settings(str(flow_run.name)))
        log.warning(
            "run %s ended %s; swept its label, left: %s", flow_run.name, state.type, obs.left
        )
    except Exception as exc:  # the next run's janitor is the last layer
        log.warning(
            "run %s: sweep after %s failed (%s); the janitor will reap it",
            flow_run.name,
            state.type,
            exc,
        )


class Verification:
    """One run walking its stages: which stage runs next, and what each one found."""

    def __init__(
        self, cfg: Config, run_id: str, seams: Seams, adopting: adoption.Settings | None = None
    ) -> None:
        self.cfg, self.run_id, self.seams = cfg, run_id, seams
        self.adopting = adopting  # a finished harness run to take as the deploy proof
        self.report = Report(run_id, cfg.target.name, str(cfg.source), started_at=utc_now())
        self.report.target_via = seams.host.describe()
        self.started = datetime.now(UTC)
        self.routes = routes.Settings.from_config(cfg)
        self.facts = facts.Settings.from_config(cfg)
        self.deploy = deploy.Settings.from_config(cfg)
        # Every capacity-probe service the run created: a VIP line naming one is ours.
        self.probe_ids: tuple[str, ...] = ()
        self.interrupted: BaseException | None = None  # SIGINT/SIGTERM met during teardown
        self.log = get_run_logger()

    def _logs(
        self, check_id: str, what: str, since: datetime, judge_gc: bool = False
    ) -> logscan.Settings:
        ours = self.probe_ids
        return logscan.Settings.window(
            self.cfg, check_id, what, since, datetime.now(UTC), ours, judge_gc
        )

    def read_only_stages(self) -> bool:
        """Preconditions, facts, routes and the log window, concurrently; True when test
        traffic may start."""
        report, seams = self.report, self.seams
        window = self._logs(
            Family.LOGS.id("window"),
            "the window",
            self.started - timedelta(hours=self.cfg.logs.window_h),
        )
        pre_f = check_preconditions.submit(seams, preconditions.Settings.from_config(self.cfg))
        facts_f = capture_facts.submit(seams, self.facts, facts.BEFORE)
        routes_f = check_routes.submit(seams, self.routes)
        logs_f = scan_docker_log.submit(seams, window)
        before, health = facts_f.result()
        report.facts_before = before.facts
        pre = pre_f.result()
        route_checks = routes_f.result()
        headroom = [c for c in health if c.family == Family.FACTS]
        services = [c for c in health if c.family != Family.FACTS]
        report.add([*pre, *services, *route_checks, *headroom])
        report.logs = logs_f.result()[0].scan
        report.stages[Stage.PRECONDITIONS] = stage_outcome([*pre, *services])
        report.stages[Stage.ROUTES] = stage_outcome(route_checks)
        reason = routes.traffic_blockers([*pre, *services], route_checks, self.routes)
        if not reason:
            report.stages[Stage.TRAFFIC] = StageOutcome(Outcome.ALLOWED)
            return True
        report.stages[Stage.TRAFFIC] = StageOutcome(Outcome.BLOCKED)
        self.log.warning("%s", reason)
        self._skip_traffic_stages(reason)
        return False

    def _skip_traffic_stages(self, reason: str) -> None:
        for stage, family in ((Stage.DEPLOY, Family.DEPLOY), (Stage.ALLOCATOR, Family.ALLOC)):
            self.report.stages[stage] = StageOutcome(Outcome.SKIPPED, reason)
            self.report.add([skipped(family.id("stage"), Gate.M2, "stage runs", reason)])

    def quiet_host_stage(self) -> bool:
        """True when no other recipe run, Drone build or sweep is active (waiting within
        bounds); otherwise nothing is created and the run ends INCOMPLETE."""
        if self.deploy is None:
            return True
        quiet = wait_for_quiet_host(self.seams, self.deploy)
        self.report.add([quiet])
        if quiet.status == Status.PASS:
            return True
        self.report.stages[Stage.TRAFFIC] = StageOutcome(
            Outcome.HELD, "another run or sweep is active"
        )
        self._skip_traffic_stages(f"no new test traffic: {quiet.detail}")
        return False

    def _routes_still_up(self, stage: Stage, family: Family, expected: str) -> bool:
        """Re-check the core routes before a stage adds test traffic."""
        recheck = self.report.add([recheck_core_routes(self.seams, self.routes, str(stage))])[0]
        if recheck.status == Status.PASS:
            return True
        stopped = routes.traffic_stopped(family.id("stage"), expected, recheck)
        self.report.add([stopped])
        self.report.stages[stage] = StageOutcome(
            Outcome.SKIPPED, stopped.detail.removeprefix("skipped: ")
        )
        return False

    def deploy_stage(self) -> None:
        report = self.report
        if self.deploy is None:
            check = report.add([deploy.not_configured()])[0]
            report.stages[Stage.DEPLOY] = StageOutcome(
                Outcome.SKIPPED, check.detail.removeprefix("skipped: ")
            )
            return
        if not self._routes_still_up(Stage.DEPLOY, Family.DEPLOY, "deploy proof runs"):
            return
        if self.adopting is not None:
            drone = adoption.drone_client(self.cfg, self.adopting.run)
            checks, report.deploy_adopted = adopt_run(self.seams, self.adopting, drone)
        else:
            checks, report.deploy_stacks = deploy_proof(self.seams, self.deploy)
        report.stages[Stage.DEPLOY] = stage_outcome(report.add(checks))

    def allocator_stage(self) -> None:
        report = self.report
        if not self._routes_still_up(Stage.ALLOCATOR, Family.ALLOC, "the reproduction runs"):
            return
        started = datetime.now(UTC)
        settings = allocator.Settings.from_config(self.cfg, self.run_id)
        obs, checks = allocator_proof(self.seams, settings)
        report.stages[Stage.ALLOCATOR] = stage_outcome(report.add(checks))
        report.allocator = obs.result
        self.probe_ids = obs.probe_ids
        if obs.result is not None:
            window = self._logs(Family.LOGS.id("fresh-allocator"), "the reproduction", started)
            report.add(scan_docker_log(self.seams, window)[1])

    def finish_logs_and_guard(self, canary: bool) -> None:
        window = self._logs(Family.LOGS.id("fresh-run"), "this run", self.started, judge_gc=True)
        obs, checks = scan_docker_log(self.seams, window)
        self.report.run_logs = obs.scan
        self.report.add(checks)
        settings = guard.Settings.from_config(self.cfg, self.run_id, canary)
        # The canary runs last, after the run's own log window has been judged, and never
        # when test traffic was held back.
        checks = [guard.not_configured()] if settings is None else guard_proof(self.seams, settings)
        self.report.stages[Stage.GUARD] = stage_outcome(self.report.add(checks))

    def abort(self, exc: BaseException) -> None:
        """An interrupted run proves nothing: it must not leave a claim behind."""
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        for gate in Gate:
            self.report.add(
                [
                    Check(
                        Family.RUN.id(f"aborted.{gate}"),
                        gate,
                        Status.ERROR,
                        "the run completes",
                        why,
                    )
                ]
            )
        self.report.stages[Stage.ABORTED] = StageOutcome(Outcome.FAIL, why)

    def teardown_stage(self) -> bool:
        """Remove what this run made; True when nothing is left."""
        settings = teardown.Settings(self.run_id)
        try:
            checks = teardown_task(self.seams, settings)
        except BaseException as exc:
            # The engine may be shutting down (SIGINT/SIGTERM): sweep directly, then re-check.
            checks = teardown.judge(teardown.gather(self.seams, settings), settings)
            if not isinstance(exc, Exception):
                # The operator stopped the run during its teardown: it ends interrupted (after
                # its evidence), never with the verdict it had before.
                self.interrupted = exc
        residue = self.report.add(checks)[0]
        clean = residue.status == Status.PASS
        self.report.stages[Stage.TEARDOWN] = (
            StageOutcome(Outcome.CLEAN) if clean else StageOutcome(Outcome.LEFT, residue.found)
        )
        return clean

    def after_facts(self) -> None:
        """Host facts after the run; facts the host could not give are an error check."""
        if self.seams.swarm.lost:
            error = f"{self.cfg.target.docker_host} was lost during the run"
        else:
            try:
                after, checks = capture_facts(self.seams, self.facts, facts.AFTER)
            except Exception as exc:
                error = str(exc)
            else:
                self.report.facts_after = after.facts
                self.report.add(checks)
                return
        self.report.add([facts.unavailable(facts.AFTER, error)])


def _run_name() -> str:
    return new_run_id()


@flow(
    name="pvcheck-verify",
    flow_run_name=_run_name,
    log_prints=False,
    on_cancellation=[_sweep_after_abort],
    on_crashed=[_sweep_after_abort],
)
def verify(
    target: Host = TARGET,
    allocator_batch: Batch = BATCH,
    allocator_concurrency: Concurrency = CONCURRENCY,
    allocator_rounds: Rounds = ROUNDS,
    canary: bool = CANARY,
    adopt: AdoptRun = ADOPT,
) -> State:
    """Verify one host: control plane and routing (M1), a real recipe deploy and the
    allocator reproduction (M2); write the evidence; the run ends Failed when a gate fails."""
    runlog.install()
    params = RunParameters(
        config=target,
        allocator_batch=allocator_batch,
        allocator_concurrency=allocator_concurrency,
        allocator_rounds=allocator_rounds,
        canary=canary,
        adopt=adopt,
    )
    cfg = load_config(served_config(params.config), params.overrides())
    if params.canary and cfg.lab is None:
        raise ConfigError(
            FORM,
            TITLES["canary"],
            f"the canary runs only against the built-in lab's own engine; {cfg.target.name!r} "
            f"({cfg.source}) is not a lab config",
        )
    # Refused before anything connects: a run to adopt needs the config's [deploy.adopt].
    if params.adopt:
        adoption.Settings.from_config(cfg, params.adopt, f"{FORM}'s {TITLES['adopt']!r}")
        adoption.drone_client(cfg, params.adopt)  # its build is asked: the token must be set
    run_id = str(runtime_flow_run.name or new_run_id())
    me, started = this_run(run_id), datetime.now(UTC)
    try:
        with HostLock(cfg.target.state_dir, cfg.target.docker_host, me, cfg.target.ssh.config_file):
            state = _verify_locked(cfg, run_id, params)
        explain_collisions(me, started)
        return state
    except HostBusy as exc:
        # Another run (the UI's, the nightly one, another machine's) works on this engine:
        # this one steps aside.
        return step_aside(exc)


def _verify_locked(cfg: Config, run_id: str, params: RunParameters) -> State:
    log = get_run_logger()
    log.info("pvcheck run %s against %s (config %s)", run_id, cfg.target.name, cfg.source)
    # The evidence is written last: a docs folder it cannot be written to (not root's alone,
    # read-only) is refused now, before a deploy or a throwaway is made for nothing.
    require_writable_docs(cfg)
    try:
        seams = connect(cfg, run_id)
    except TargetUnreachable as exc:
        for line in write_unreachable(cfg, run_id, utc_now(), exc).lines():
            log.warning("%s", line)
        raise
    assert isinstance(seams.swarm, Swarm)
    with EngineLock(seams.swarm, run_id, flow_run_url=this_run(run_id).flow_run_url):
        return _verify_on_engine(cfg, run_id, params, seams)


def _verify_on_engine(cfg: Config, run_id: str, params: RunParameters, seams: Seams) -> State:
    adopting = adoption.Settings.from_config(cfg, params.adopt) if params.adopt else None
    run = Verification(cfg, run_id, seams, adopting)
    report, log = run.report, run.log
    registry = RunRegistry(cfg.target.state_dir, cfg.target.docker_host, cfg.target.ssh.config_file)
    report.add([reap_dead_runs(seams, registry, cfg.allocator.settle_timeout_s)])
    registry.start(run_id)
    try:
        traffic = run.read_only_stages() and run.quiet_host_stage()
        if traffic:
            run.deploy_stage()
            run.allocator_stage()
        run.finish_logs_and_guard(canary=params.canary and traffic)
    except BaseException as exc:
        run.abort(exc)
        raise
    finally:
        # Evidence is written whatever the host does from here on.
        if run.teardown_stage():
            registry.finish(run_id)
        if run.interrupted is not None and Stage.ABORTED not in report.stages:
            run.abort(run.interrupted)
        run.after_facts()
        report.finished_at = utc_now()
        written = write_evidence_files(report, cfg)
        report.evidence, report.docs = written.paths, written.docs
        metrics.publish(report, cfg)  # a warning when it cannot be written; never the verdict
        publish_artifacts(report)
    if run.interrupted is not None:
        raise run.interrupted

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
