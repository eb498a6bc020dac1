"""Task: the precondition phase is done and the overlay network is the configured one."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import preconditions
from pvcheck.records import Check
from pvcheck.seams import Seams


@task(name="preconditions", cache_policy=NO_CACHE)
def check_preconditions(seams: Seams, settings: preconditions.Settings) -> list[Check]:
    log = get_run_logger()
    obs = preconditions.gather(seams, settings)
    net = settings.network.name
    log.info(
        "grep -x '## DONE' %s -> %s",
        settings.status_file,
        "file missing" if obs.done is None else ("found" if obs.done else "not found"),
    )
    log.info(
        "docker network inspect %s --format '{{.Driver}} {{(index .IPAM.Config 0).Subnet}}' -> %s",
        net,
        f"{obs.network.driver} {obs.network.subnet}" if obs.network else "no such network",
    )
    return preconditions.judge(obs, settings)
