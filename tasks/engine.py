"""Connect to the target's engine and bundle the run's seams."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck.config import Config
from pvcheck.seams import Seams
from pvcheck.swarm import Swarm
from pvcheck.wiring import build_seams, open_engine


@task(name="connect-engine", cache_policy=NO_CACHE)
def connect_engine(cfg: Config) -> Swarm:
    log = get_run_logger()
    log.info("docker -H %s version  (target %s)", cfg.target.docker_host, cfg.target.name)
    swarm = open_engine(cfg.target)
    info = swarm.info()
    log.info(
        "engine %s, swarm %s, node %s",
        info.get("ServerVersion"),
        (info.get("Swarm") or {}).get("LocalNodeState"),
        info.get("Name"),
    )
    return swarm


def connect(cfg: Config, run_id: str, with_driver: bool = True) -> Seams:
    """The engine (a task, so the UI shows it), then every other seam from the config. A
    review deploys nothing: it needs no driver (nor the Drone token)."""
    return build_seams(cfg, connect_engine(cfg), run_id, with_driver)
