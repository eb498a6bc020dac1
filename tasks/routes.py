"""The route-check task: every configured route, concurrently, judged one record each."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import judge
from pvcheck.claims import route_command
from pvcheck.config import Config
from pvcheck.hosts import host_for
from pvcheck.records import Check, Status
from pvcheck.routes import probe_routes


@task(name="check-routes", cache_policy=NO_CACHE)
def check_routes(cfg: Config) -> list[Check]:
    log = get_run_logger()
    t0 = time.monotonic()
    probes = probe_routes(cfg.routes, cfg.http, host=host_for(cfg.target))
    checks = []
    for route, probe in zip(cfg.routes, probes, strict=True):
        check = judge.route_answer(route, probe)
        checks.append(check)
        log.info(
            "%s -> %s (%s) [%s]", route_command(cfg, route), check.found, check.detail, check.status
        )
    log.info("%d routes checked in %.2fs", len(checks), time.monotonic() - t0)
    return checks


@task(name="recheck-core-routes", cache_policy=NO_CACHE)
def recheck_core_routes(cfg: Config, before: str) -> Check:
    """Re-probe the core routes right before a stage starts new test traffic, so an outage
    of the reverse proxy seen mid-run stops the run from adding load to a broken host."""
    core = [r for r in cfg.routes if r.core]
    probes = probe_routes(core, cfg.http, host=host_for(cfg.target))
    check = judge.routes_still_up(
        before, [judge.route_answer(r, p) for r, p in zip(core, probes, strict=True)]
    )
    log = get_run_logger()
    (log.info if check.status == Status.PASS else log.warning)(
        "before %s: %s %s", before, check.found, check.detail
    )
    return check
