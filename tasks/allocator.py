"""Task: the bounded allocator reproduction with throwaway stacks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import allocator
from pvcheck.config import MAX_ALLOCATOR_BATCH, MAX_ALLOCATOR_CONCURRENCY, MAX_ALLOCATOR_ROUNDS
from pvcheck.records import Check
from pvcheck.seams import Seams
from pvcheck.swarm import LABEL_RUN
from pvcheck.tasks.progress import progress_artifacts


@task(name="allocator-proof", cache_policy=NO_CACHE)
def allocator_proof(
    seams: Seams, settings: allocator.Settings
) -> tuple[allocator.Observation, list[Check]]:
    log = get_run_logger()
    a = settings.allocator
    log.info(
        "allocator reproduction: %d round(s) of %d throwaway stacks, concurrency %d "
        "(caps %d/%d/%d), label %s=%s",
        a.rounds,
        a.batch,
        a.concurrency,
        MAX_ALLOCATOR_ROUNDS,
        MAX_ALLOCATOR_BATCH,
        MAX_ALLOCATOR_CONCURRENCY,
        LABEL_RUN,
        settings.run_id,
    )
    with progress_artifacts("allocator reproduction"):
        obs = allocator.gather(seams, settings, progress=log.info)
    if obs.refused:
        log.warning("allocator reproduction refused: %s", obs.refused)
    checks = allocator.judge(obs, settings)
    for check in checks:
        log.info("%s: %s (%s) %s", check.id, check.status, check.found, check.detail)
    return obs, checks
