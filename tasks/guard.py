"""Task: the upgrade procedure's Step-0 guard (and, in the lab, the canary)."""

from __future__ import annotations

from dataclasses import replace

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import guard
from pvcheck.records import Check
from pvcheck.seams import Seams


@task(name="upgrade-guard", cache_policy=NO_CACHE)
def guard_proof(seams: Seams, settings: guard.Settings) -> list[Check]:
    log = get_run_logger()
    log.info("reading section %r of %s", settings.guard.section, settings.guard.file)
    obs = guard.gather(seams, settings)
    if obs.argv is not None:
        log.info("detection, run with a sample log on stdin: %s", " ".join(obs.argv))
    if settings.canary:
        # The canary runs last, after the run's own log window has been judged.
        log.info("lab canary: exhausting a throwaway /29 so the real allocator logs the signature")
        obs = replace(obs, canary=guard.gather_canary(seams, settings, obs.argv))
        if obs.canary and obs.canary.refused:
            log.warning("canary refused: %s", obs.canary.refused)
    checks = guard.judge(obs, settings)
    for check in checks:
        log.info("%s: %s — %s %s", check.id, check.status, check.found, check.detail)
    return checks
