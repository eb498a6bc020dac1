"""Task: host facts (the overlay's endpoints, control-plane health, stacks) and their checks."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import facts
from pvcheck.records import Check
from pvcheck.seams import Seams
from pvcheck.tasks.naming import run_name


@run_name
def facts_run_name(parameters: dict[str, Any]) -> str:
    """The task run's name says which capture it is: before, after, review."""
    return f"capture-facts-{parameters.get('when', facts.BEFORE)}"


@task(name="capture-facts", task_run_name=facts_run_name, cache_policy=NO_CACHE)
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
