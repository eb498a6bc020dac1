"""Tasks: every configured route through the reverse proxy, and the core routes' re-check
before new test traffic."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import routes
from pvcheck.claims import route_command
from pvcheck.records import Check, Status
from pvcheck.seams import Seams
from pvcheck.tasks.naming import run_name


@task(name="check-routes", cache_policy=NO_CACHE)
def check_routes(seams: Seams, settings: routes.Settings) -> list[Check]:
    log = get_run_logger()
    t0 = time.monotonic()
    checks = routes.judge(routes.gather(seams, settings), settings)
    for route, check in zip(settings.routes, checks, strict=True):
        log.info(
            "%s -> %s (%s) [%s]",
            route_command(seams.host, route),
            check.found,
            check.detail,
            check.status,
        )
    log.info("%d routes checked in %.2fs", len(checks), time.monotonic() - t0)
    return checks


@run_name
def recheck_run_name(parameters: dict[str, Any]) -> str:
    """The task run's name says which stage the re-check comes before."""
    return f"recheck-core-routes-before-{parameters.get('before', '')}".rstrip("-")


@task(name="recheck-core-routes", task_run_name=recheck_run_name, cache_policy=NO_CACHE)
def recheck_core_routes(seams: Seams, settings: routes.Settings, before: str) -> Check:
    check = routes.recheck(seams, settings, before)
    log = get_run_logger()
    (log.info if check.status == Status.PASS else log.warning)(
        "before %s: %s %s", before, check.found, check.detail
    )
    return check
