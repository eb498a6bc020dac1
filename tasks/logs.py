"""Task: scan the docker log for the VIP/IPAM error family within a window."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import logscan
from pvcheck.records import Check
from pvcheck.seams import Seams
from pvcheck.tasks.naming import run_name


@run_name
def scan_run_name(parameters: dict[str, Any]) -> str:
    """The task run's name says which window it scans: window, fresh-allocator, fresh-run,
    after-builder (the check's id without its family)."""
    settings = parameters.get("settings")
    window = settings.check_id.rpartition(".")[2] if isinstance(settings, logscan.Settings) else ""
    return f"scan-docker-log-{window or 'window'}"


@task(name="scan-docker-log", task_run_name=scan_run_name, cache_policy=NO_CACHE)
def scan_docker_log(
    seams: Seams, settings: logscan.Settings
) -> tuple[logscan.Observation, list[Check]]:
    log = get_run_logger()
    obs = logscan.gather(seams, settings)
    scan = obs.scan
    if scan.error:
        log.warning("%s", logscan.summary(scan, settings.what))
    else:
        patterns = logscan.error_family(settings.network)
        log.info(
            "%s | grep -c -e %s  (window %s -> %s)",
            scan.source,
            " -e ".join(repr(p) for p in patterns.values()),
            scan.since,
            scan.until,
        )
        log.info("%s", logscan.summary(scan, settings.what))
        # The raw dockerd lines are evidence for whoever digs (the JSON report keeps them):
        # at INFO they would read as the run's own warnings.
        for line in scan.lines[:10]:
            log.debug("  [%s .. %s] %s", scan.since, scan.until, line)
    return obs, logscan.judge(obs, settings)
