"""The seams between pvcheck and the world, bundled once per run.

Every stage's `gather` reaches the host only through these Protocols; each has one real
implementation (below, or the module named) and one small fake in tests/fakes.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pvcheck.config import Config, HttpConfig, RouteConfig
    from pvcheck.deploy import DeployOutcome
    from pvcheck.logscan import LogSource
    from pvcheck.routes import RouteObservation
    from pvcheck.swarm import Swarm


class SwarmApi(Protocol):
    """The docker engine as pvcheck reads it, removes what it made, and creates the
    allocator's measuring objects: a scratch overlay and task-less probe services
    (pvcheck.swarm.Swarm; stacks themselves go through the StackTool)."""

    requests: int
    lost: bool

    def info(self) -> dict[str, Any]: ...
    def network(self, name: str) -> dict[str, Any] | None: ...
    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]: ...
    def tasks(self, service_ids: list[str] | None = None) -> list[dict[str, Any]]: ...
    def containers(self, label: str | list[str]) -> list[dict[str, Any]]: ...
    def networks(self, label: str | list[str]) -> list[dict[str, Any]]: ...
    def volumes(self, label: str | list[str]) -> list[dict[str, Any]]: ...
    def configs(self, label: str | list[str]) -> list[dict[str, Any]]: ...
    def secrets(self, label: str | list[str]) -> list[dict[str, Any]]: ...
    def all_networks(self) -> list[dict[str, Any]]: ...
    def service(self, service_id: str) -> dict[str, Any] | None: ...
    def create_overlay(self, name: str, subnet: str, labels: dict[str, str]) -> str: ...
    def create_probe_service(
        self, name: str, image: str, labels: dict[str, str], network_id: str | None
    ) -> str: ...
    def remove_service(self, service_id: str) -> None: ...
    def remove_network(self, network_id: str) -> bool: ...
    def remove_container(self, container_id: str) -> None: ...
    def remove_volume(self, name: str) -> bool: ...
    def remove_config(self, config_id: str) -> None: ...
    def remove_secret(self, secret_id: str) -> None: ...


class StackTool(Protocol):
    """Stacks as operators deploy them: the docker CLI on the run's engine (pvcheck.stackcli).
    The compose text is prepared first (pvcheck.stackfile: interpolated and labelled)."""

    def stack_deploy(
        self, stack: str, compose: str, env: Mapping[str, str] | None = None, where: str = ""
    ) -> None: ...
    def stack_rm(self, stacks: list[str]) -> None: ...


class RouteProber(Protocol):
    """HTTP through the reverse proxy: one observation per route, in order (pvcheck.routes)."""

    def probe(self, routes: Sequence[RouteConfig]) -> list[RouteObservation]: ...


class HostCommands(Protocol):
    """Where host commands run: here or over ssh (pvcheck.hosts)."""

    @property
    def remote(self) -> bool: ...
    def describe(self) -> str: ...
    def argv(self, argv: list[str]) -> list[str]: ...
    def how(self, command: str) -> str: ...
    def failure(self, stderr: str) -> str:
        """What went wrong reaching the host, from the client's complaint."""
        ...


class DeployDriver(Protocol):
    """Drives one real recipe deploy (compose, harness command or Drone; pvcheck.deploy)."""

    def run(self) -> DeployOutcome: ...
    def busy(self) -> list[str]:
        """Other runs this driver's system knows of (running Drone builds); [] for none."""
        ...


@dataclass(frozen=True)
class Seams:
    swarm: SwarmApi
    stacks: StackTool
    http: RouteProber
    logs: LogSource
    host: HostCommands
    driver: DeployDriver | None  # None: the config has no [deploy] section
    # The built-in lab's own engine, for lab-only actions (the canary); None on any other
    # engine, so such an action cannot reach a real host.
    lab_engine: Swarm | None = None


@dataclass(frozen=True)
class HttpProber:
    """The real RouteProber: httpx from here, or curl on the host for check_from = "host"."""

    http: HttpConfig
    host: Any = None  # pvcheck.hosts.Host

    def probe(self, routes: Sequence[RouteConfig]) -> list[RouteObservation]:
        from pvcheck.routes import probe_routes

        return probe_routes(list(routes), self.http, host=self.host)


def build_seams(cfg: Config, swarm: Swarm, run_id: str, with_driver: bool = True) -> Seams:
    """The run's seams: the connected engine, and everything else from the config. Lab-only
    actions get the engine only when it is the built-in lab's (local, its network labelled)."""
    from pvcheck.canary import lab_engine_problem
    from pvcheck.deploy import make_driver
    from pvcheck.hosts import host_for
    from pvcheck.logscan import make_log_source
    from pvcheck.stackcli import DockerCli

    host = host_for(cfg.target)
    lab_problem = lab_engine_problem(swarm, cfg.target.docker_host, cfg.network.name)
    lab = swarm if cfg.lab is not None and lab_problem is None else None
    return Seams(
        swarm=swarm,
        stacks=DockerCli.for_target(cfg.target),
        http=HttpProber(cfg.http, host),
        logs=make_log_source(cfg.logs, host),
        host=host,
        driver=make_driver(swarm, cfg, run_id) if with_driver else None,
        lab_engine=lab,
    )
