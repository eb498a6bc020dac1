"""Tasks that read the host: engine connection, facts, precondition phase, docker log."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck.config import Config
from pvcheck.facts import HostFacts, gather_facts
from pvcheck.hosts import host_for
from pvcheck.logscan import (
    LogScan,
    LogUnreadable,
    error_family,
    make_log_source,
    scan_lines,
    unread_scan,
)
from pvcheck.statefiles import has_done, read_state
from pvcheck.swarm import Swarm


@task(name="connect-engine", cache_policy=NO_CACHE)
def connect_engine(cfg: Config) -> Swarm:
    log = get_run_logger()
    log.info("docker -H %s version  (target %s)", cfg.target.docker_host, cfg.target.name)
    swarm = Swarm.for_target(cfg.target)
    info = swarm.info()
    log.info(
        "engine %s, swarm %s, node %s",
        info.get("ServerVersion"),
        (info.get("Swarm") or {}).get("LocalNodeState"),
        info.get("Name"),
    )
    return swarm


@task(name="capture-facts", cache_policy=NO_CACHE)
def capture_facts(swarm: Swarm, cfg: Config, when: str) -> HostFacts:
    log = get_run_logger()
    before = swarm.requests
    facts = gather_facts(
        swarm,
        cfg.network.name,
        cfg.services.control_plane,
        timedelta(hours=cfg.services.restart_window_h),
    )
    log.info(
        "[%s] docker network inspect --verbose %s; docker service ls; docker service ps ...  "
        "(%d API requests)",
        when,
        cfg.network.name,
        swarm.requests - before,
    )
    if facts.network:
        log.info("[%s] %s", when, facts.network.summary())
    else:
        log.info("[%s] network %s: missing", when, cfg.network.name)
    for svc in facts.services:
        log.info("[%s] %s", when, svc.summary())
    log.info(
        "[%s] docker stack ls: %d stacks (%s)",
        when,
        len(facts.stacks),
        ", ".join(f"{k}={v}" for k, v in facts.stacks.items()),
    )
    return facts


@task(name="read-precondition-phase", cache_policy=NO_CACHE)
def read_precondition_phase(cfg: Config) -> bool | None:
    path = cfg.docs.precondition_status
    text = read_state(path)
    done = None if text is None else has_done(text)
    get_run_logger().info(
        "grep -x '## DONE' %s -> %s",
        path,
        "file missing" if done is None else ("found" if done else "not found"),
    )
    return done


@task(name="scan-docker-log", cache_policy=NO_CACHE)
def scan_docker_log(cfg: Config, since: datetime, until: datetime) -> LogScan:
    log = get_run_logger()
    since = min(since, until)  # a window never runs backwards (a clock or a claim time)
    source = make_log_source(cfg.logs, host_for(cfg.target))
    patterns = error_family(cfg.network.name)
    try:
        scan = scan_lines(
            source.lines(since, until),
            patterns,
            since,
            until,
            cfg.logs.max_lines,
            source.describe(),
        )
    except LogUnreadable as exc:
        log.warning("docker log unreadable: %s", exc)
        return unread_scan(source.describe(), patterns, since, until, str(exc))
    log.info(
        "%s | grep -c -e %s  (window %s -> %s)",
        source.describe(),
        " -e ".join(repr(p) for p in patterns.values()),
        scan.since,
        scan.until,
    )
    log.info("docker log matches: %s", ", ".join(f"{k} {v}" for k, v in scan.counts.items()))
    for line in scan.lines[:10]:
        log.info("  %s", line)
    return scan
