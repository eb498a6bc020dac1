"""Task: scan the docker log for the VIP/IPAM error family within a window."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import logscan
from pvcheck.records import Check
from pvcheck.seams import Seams


@task(name="scan-docker-log", cache_policy=NO_CACHE)
def scan_docker_log(
    seams: Seams, settings: logscan.Settings
) -> tuple[logscan.Observation, list[Check]]:
    log = get_run_logger()
    obs = logscan.gather(seams, settings)
    scan = obs.scan
    if scan.error:
        log.warning("docker log unreadable: %s", scan.error)
    else:
        patterns = logscan.error_family(settings.network)
        log.info(
            "%s | grep -c -e %s  (window %s -> %s)",
            scan.source,
            " -e ".join(repr(p) for p in patterns.values()),
            scan.since,
            scan.until,
        )
        log.info(
            "docker log matches between %s and %s (%s): %s",
            scan.since,
            scan.until,
            settings.what,
            ", ".join(f"{k} {v}" for k, v in scan.counts.items()),
        )
        for line in scan.lines[:10]:
            log.info("  [%s .. %s] %s", scan.since, scan.until, line)
    return obs, logscan.judge(obs, settings)
