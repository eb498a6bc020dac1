"""Task: host facts (the overlay's endpoints, control-plane health, stacks) and their checks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import facts
from pvcheck.records import Check
from pvcheck.seams import Seams


@task(name="capture-facts", cache_policy=NO_CACHE)
def capture_facts(
    seams: Seams, settings: facts.Settings, when: str = facts.BEFORE
) -> tuple[facts.Observation, list[Check]]:
    log = get_run_logger()
    obs = facts.gather(seams, settings, when)
    found = obs.facts
    log.info(
        "[%s] docker network inspect --verbose %s; docker service ls; docker service ps ...  "
        "(%d API requests)",
        when,
        settings.network,
        obs.requests,
    )
    if found.network:
        log.info("[%s] %s", when, found.network.summary())
    else:
        log.info("[%s] network %s: missing", when, settings.network)
    for svc in found.services:
        log.info("[%s] %s", when, svc.summary())
    log.info(
        "[%s] docker stack ls: %d stacks (%s)",
        when,
        len(found.stacks),
        ", ".join(f"{k}={v}" for k, v in found.stacks.items()),
    )
    return obs, facts.judge(obs, settings)
