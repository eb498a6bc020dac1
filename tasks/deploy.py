"""The deploy-proof tasks: make sure no other run or sweep is active, drive one real recipe
deploy, and check the teardown of the stack it actually used."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import judge
from pvcheck.config import Config
from pvcheck.deploy import DeployOutcome, judge_outcome
from pvcheck.deploy.active import wait_until_idle
from pvcheck.deploy.command import CommandDriver
from pvcheck.deploy.compose import ComposeDriver
from pvcheck.facts import NetworkFacts, attribute, parse_network, settle_network
from pvcheck.hosts import host_for
from pvcheck.records import Check, Status
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_STACK, Swarm
from tasks.routes import recheck_core_routes


def _drive(swarm: Swarm, cfg: Config, run_id: str) -> DeployOutcome:
    assert cfg.deploy is not None
    if cfg.deploy.driver == "compose":
        sampler = Swarm.for_target(cfg.target)
        return ComposeDriver(swarm, sampler, cfg, run_id).run()
    if cfg.deploy.driver == "command":
        return CommandDriver(swarm, cfg, run_id).run()
    from pvcheck.deploy.drone import DroneDriver

    return DroneDriver(swarm, cfg, run_id).run()


def _drone_running(cfg: Config) -> Callable[[], list[str]] | None:
    """Running Drone builds as active runs, when a Drone API is configured."""
    deploy = cfg.deploy
    if deploy is None or deploy.drone is None or not deploy.active_runs.drone_builds:
        return None
    from pvcheck.deploy.drone import DroneClient, DroneError, drone_token

    client = DroneClient(deploy.drone, drone_token(deploy.drone, str(cfg.source)))

    def running() -> list[str]:
        try:
            return client.running()
        except (DroneError, httpx.HTTPError) as exc:
            # pvcheck cannot tell that no build runs, so it must not start one.
            return [f"Drone API cannot be asked ({type(exc).__name__}: {exc}); a build may run"]

    return running


@task(name="wait-for-quiet-host", cache_policy=NO_CACHE)
def wait_for_quiet_host(swarm: Swarm, cfg: Config) -> Check:
    """Wait (at most active_runs.wait_s) until no other recipe run, harness stack, Drone
    build or sweep is active. Still busy: a skip, and the run creates nothing."""
    log = get_run_logger()
    deploy = cfg.deploy
    assert deploy is not None
    t0 = time.monotonic()
    last: list[str] = []

    def waiting(found: list[str]) -> None:
        if found != last:
            log.info("waiting (at most %gs) for: %s", deploy.active_runs.wait_s, "; ".join(found))
            last[:] = found

    active = wait_until_idle(
        deploy.active_runs,
        swarm,
        extra=_drone_running(cfg),
        host=host_for(cfg.target),
        stack_pattern=deploy.stack_pattern,
        control_plane=cfg.services.control_plane,
        on_wait=waiting,
    )
    expected = "no other recipe run, Drone build or sweep in progress"
    elapsed = time.monotonic() - t0
    if active:
        reason = "another run or sweep is active (" + "; ".join(active[:5]) + ")"
        log.warning("no test traffic: %s", reason)
        return Check("deploy.active", "M2", Status.SKIP, expected, "busy", reason, elapsed)
    log.info("host quiet after %.1fs: no active run, harness stack, build or sweep", elapsed)
    return Check("deploy.active", "M2", Status.PASS, expected, "none active", "", elapsed)


@task(name="deploy-proof", cache_policy=NO_CACHE)
def deploy_proof(swarm: Swarm, cfg: Config, run_id: str) -> list[Check]:
    log = get_run_logger()
    deploy = cfg.deploy
    assert deploy is not None
    routes = recheck_core_routes(cfg, "deploy")
    if routes.status != Status.PASS:
        return [routes, judge.traffic_stopped("deploy.stage", "deploy proof runs", routes)]
    baseline_inspect = swarm.network(cfg.network.name)
    baseline = parse_network(baseline_inspect) if baseline_inspect else None
    log.info(
        "deploy proof: driver %s, recipe %s, %s endpoints on %s before",
        deploy.driver,
        deploy.recipe,
        baseline.used if baseline else None,
        cfg.network.name,
    )
    outcome = _drive(swarm, cfg, run_id)
    for tier in outcome.tiers:
        log.info("tier %s: %s %s", tier.tier, tier.status, tier.detail)
    log.info("attachment: %s; stacks used: %s", outcome.attach_detail, outcome.stacks or "none")
    checks = judge_outcome(outcome, list(deploy.tiers), cfg.network.name)
    return [*checks, _teardown_check(swarm, cfg, outcome, baseline)]


def _teardown_check(
    swarm: Swarm, cfg: Config, outcome: DeployOutcome, baseline: NetworkFacts | None
) -> Check:
    """Clean teardown, checked by pvcheck itself whatever the driver said: no object of the
    stacks the app used, and their endpoints released."""
    log = get_run_logger()
    if not outcome.stacks:
        return judge.clean_teardown([], {}, None, None, None, outcome.stack)
    prefixes = tuple(f"{s}_" for s in outcome.stacks)
    after, _ = settle_network(
        swarm,
        cfg.network.name,
        lambda f: baseline is None or attribute(baseline, f, prefixes).leaked == 0,
        timeout_s=cfg.allocator.settle_timeout_s,
    )
    left: dict[str, list[str]] = {}
    for stack in outcome.stacks:
        for kind, names in list_residue(swarm, f"{LABEL_STACK}={stack}").items():
            left.setdefault(kind, []).extend(names)
    share = attribute(baseline, after, prefixes) if baseline and after else None
    check = judge.clean_teardown(
        outcome.stacks, left, share, after.used if after else None, outcome.clean_teardown_reported
    )
    log.info(
        "docker stack ps %s; docker network inspect -v %s -> %s",
        " ".join(outcome.stacks),
        cfg.network.name,
        check.found,
    )
    return check
