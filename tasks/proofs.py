"""M2 tasks: the janitor, the allocator reproduction, and the upgrade-guard check (+ canary)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import judge
from pvcheck.allocator import AllocatorResult, judge_allocator, refusal, reproduce
from pvcheck.canary import lab_engine_problem, run_canary
from pvcheck.config import Config
from pvcheck.facts import parse_network
from pvcheck.guard import check_guard
from pvcheck.hosts import host_for
from pvcheck.logscan import make_log_source
from pvcheck.records import Check, Status
from pvcheck.runs import RunRegistry
from pvcheck.stacks import remove_labelled
from pvcheck.swarm import LABEL_RUN, Swarm


@task(name="janitor", cache_policy=NO_CACHE)
def reap_dead_runs(swarm: Swarm, cfg: Config) -> Check:
    """Remove what earlier runs left: only runs recorded as started here and no longer alive."""
    log = get_run_logger()
    registry = RunRegistry(cfg.target.state_dir, cfg.target.docker_host)
    reaped = {}
    for record in registry.stale():
        label = f"{LABEL_RUN}={record.run_id}"
        log.info(
            "janitor: run %s (pid %d, started %s) is dead; removing label %s",
            record.run_id,
            record.pid,
            record.started_at,
            label,
        )
        left = remove_labelled(swarm, label, timeout_s=cfg.allocator.settle_timeout_s)
        reaped[record.run_id] = left
        if not any(left.values()):
            registry.finish(record.run_id)
    check = judge.janitor(reaped)
    log.info("janitor: %s", check.found)
    return check


@task(name="allocator-proof", cache_policy=NO_CACHE)
def allocator_proof(
    swarm: Swarm, cfg: Config, run_id: str
) -> tuple[list[Check], AllocatorResult | None]:
    log = get_run_logger()
    inspect = swarm.network(cfg.network.name)
    why = refusal(cfg.allocator, parse_network(inspect) if inspect else None)
    if why:
        log.warning("allocator reproduction refused: %s", why)
        return [
            judge.skipped("alloc.stage", "M2", "the reproduction runs", f"refused: {why}")
        ], None
    a = cfg.allocator
    log.info(
        "allocator reproduction: %d round(s) of %d throwaway stacks, concurrency %d "
        "(caps 5/20/10), label %s=%s",
        a.rounds,
        a.batch,
        a.concurrency,
        LABEL_RUN,
        run_id,
    )
    result = reproduce(swarm, cfg, run_id, progress=log.info)
    checks = judge_allocator(result, cfg.allocator)
    for check in checks:
        log.info("%s: %s (%s) %s", check.id, check.status, check.found, check.detail)
    return checks, result


@task(name="upgrade-guard", cache_policy=NO_CACHE)
def guard_proof(swarm: Swarm, cfg: Config, run_id: str, canary: bool) -> list[Check]:
    log = get_run_logger()
    if cfg.guard is None:
        return [
            judge.skipped(
                "guard.stage", "M2", "the guard check runs", "no [guard] section in the config"
            )
        ]
    host = host_for(cfg.target)
    checks, detect = check_guard(cfg.guard, host)
    for check in checks:
        log.info("%s: %s — %s %s", check.id, check.status, check.found, check.detail)
    if canary:
        not_lab = lab_engine_problem(swarm, cfg.target.docker_host, cfg.network.name)
        if not_lab:
            # Never on a real host: its Step-0 guard would restart docker on the line.
            log.warning("canary refused: %s", not_lab)
            checks.append(
                Check("guard.canary", "M2", Status.ERROR, "a lab engine", "refused", not_lab)
            )
        elif detect is None:
            checks.append(
                judge.skipped("guard.canary", "M2", "canary", "no detection command to run")
            )
        else:
            log.info(
                "lab canary: exhausting a throwaway /29 so the real allocator logs the signature"
            )
            check = run_canary(
                swarm, run_id, cfg.allocator.image, detect, make_log_source(cfg.logs, host)
            )
            log.info("%s: %s — %s", check.id, check.status, check.found)
            checks.append(check)
    return checks
