"""Tasks: remove everything carrying this run's label (and only that); the janitor does the
same for earlier runs that died."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import teardown as stage
from pvcheck.records import Check
from pvcheck.runs import RunRegistry
from pvcheck.seams import Seams


@task(name="teardown", cache_policy=NO_CACHE)
def teardown(seams: Seams, settings: stage.Settings) -> list[Check]:
    log = get_run_logger()
    log.info(
        "docker service rm $(docker service ls -q --filter label=%s)  (+ networks, volumes, "
        "configs, secrets, containers with that label)",
        settings.label,
    )
    checks = stage.judge(stage.gather(seams, settings), settings)
    log.info("residue with label %s: %s", settings.label, checks[0].found)
    return checks


@task(name="janitor", cache_policy=NO_CACHE)
def reap_dead_runs(seams: Seams, registry: RunRegistry, timeout_s: float) -> Check:
    """Remove what earlier runs left: only runs recorded as started here and no longer alive."""
    log = get_run_logger()
    dead = registry.stale()
    for record in dead:
        log.info(
            "janitor: run %s (pid %d, started %s) is dead; removing label %s",
            record.run_id,
            record.pid,
            record.started_at,
            stage.run_label(record.run_id),
        )
    reaped = stage.reap(seams, dead, timeout_s)
    for run_id, left in reaped.left.items():
        if not any(left.values()):
            registry.finish(run_id)
    check = stage.judge_janitor(reaped)
    log.info("janitor: %s", check.found)
    return check
