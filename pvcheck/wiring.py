"""Wiring: the one place that builds the real objects behind the seams, once per run.

Stages and drivers receive a `Seams` and never construct an engine connection, a docker
CLI, an HTTP client or a host of their own; this module is the only one that imports the
real implementations together, so nothing below it can import it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pvcheck.canary import lab_engine_problem
from pvcheck.config import Config, HttpConfig, RouteConfig, TargetConfig
from pvcheck.deploy.command import CommandDriver
from pvcheck.deploy.compose import ComposeDriver
from pvcheck.deploy.drone import DroneDriver
from pvcheck.hosts import host_for
from pvcheck.logscan import make_log_source
from pvcheck.routes import probe_routes
from pvcheck.seams import DeployDriver, HostCommands, RouteObservation, Seams
from pvcheck.stackcli import DockerCli
from pvcheck.swarm import Swarm


@dataclass(frozen=True)
class HttpProber:
    """The real RouteProber: httpx from here, or curl on the host for check_from = "host"."""

    http: HttpConfig
    host: HostCommands | None = None

    def probe(self, routes: Sequence[RouteConfig]) -> list[RouteObservation]:
        return probe_routes(list(routes), self.http, host=self.host)


def open_engine(target: TargetConfig) -> Swarm:
    """A connection to the target's engine: its socket here, or over ssh."""
    return Swarm.for_target(target)


def make_driver(seams: Seams, cfg: Config, run_id: str) -> DeployDriver | None:
    """The configured driver, built on the run's seams."""
    if cfg.deploy is None:
        return None
    drivers: dict[str, Callable[[Seams, Config, str], DeployDriver]] = {
        # The compose driver's attachment sampler polls on a connection of its own.
        "compose": lambda s, c, r: ComposeDriver(s, c, r, lambda: open_engine(c.target)),
        "command": CommandDriver,
        "drone": DroneDriver,
    }
    return drivers[cfg.deploy.driver](seams, cfg, run_id)


def build_seams(cfg: Config, swarm: Swarm, run_id: str, with_driver: bool = True) -> Seams:
    """The run's seams: the connected engine, and everything else from the config. Lab-only
    actions get the engine only when it is the built-in lab's (local, its network labelled)."""
    host = host_for(cfg.target)
    lab_problem = lab_engine_problem(swarm, cfg.target.docker_host, cfg.network.name)
    seams = Seams(
        swarm=swarm,
        stacks=DockerCli.for_target(cfg.target),
        http=HttpProber(cfg.http, host),
        logs=make_log_source(cfg.logs, host),
        host=host,
        driver=None,
        lab_engine=swarm if cfg.lab is not None and lab_problem is None else None,
    )
    if not with_driver:
        return seams
    return replace(seams, driver=make_driver(seams, cfg, run_id))
