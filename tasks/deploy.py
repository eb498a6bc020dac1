"""The deploy-proof task: wait out other runs, drive one real recipe deploy, check teardown."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import judge
from pvcheck.config import Config
from pvcheck.deploy import DeployOutcome, judge_outcome
from pvcheck.deploy.active import wait_until_idle
from pvcheck.deploy.command import CommandDriver
from pvcheck.deploy.compose import ComposeDriver
from pvcheck.facts import attribute, parse_network, settle_network
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


@task(name="deploy-proof", cache_policy=NO_CACHE)
def deploy_proof(swarm: Swarm, cfg: Config, run_id: str) -> list[Check]:
    log = get_run_logger()
    deploy = cfg.deploy
    assert deploy is not None
    active = wait_until_idle(deploy.active_runs, swarm, host=host_for(cfg.target))
    if active:
        reason = "skipped: another run or sweep is active (" + "; ".join(active[:5]) + ")"
        log.warning("deploy proof %s", reason)
        return [judge.skipped("deploy.active", "M2", "no other recipe run in progress", reason)]
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
    log.info("attachment: %s", outcome.attach_detail)
    checks = judge_outcome(outcome, list(deploy.tiers), cfg.network.name)
    # Clean teardown is checked here, whatever the driver said about it.
    prefix = f"{outcome.stack}_"
    after, _ = settle_network(
        swarm,
        cfg.network.name,
        lambda f: baseline is None or attribute(baseline, f, prefix).leaked == 0,
        timeout_s=cfg.allocator.settle_timeout_s,
    )
    left = list_residue(swarm, f"{LABEL_STACK}={outcome.stack}")
    share = attribute(baseline, after, prefix) if baseline and after else None
    teardown = judge.clean_teardown(
        outcome.stack, left, share, after.used if after else None, outcome.clean_teardown_reported
    )
    log.info(
        "docker stack ps %s; docker network inspect -v %s -> %s",
        outcome.stack,
        cfg.network.name,
        teardown.found,
    )
    return [*checks, teardown]
