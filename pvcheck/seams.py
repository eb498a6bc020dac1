"""The seams between pvcheck and the world: the Protocols, and the values that cross them.

Every stage's `gather` and every deploy driver reaches the engine, the stacks, HTTP, the
docker log and the host only through these; each has one real implementation (built in
pvcheck.wiring) and one small fake in tests/fakes.py. This module imports only the model
modules (config, records), so every stage can import it and none of them imports another
for the types it speaks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pvcheck.records import Status

if TYPE_CHECKING:
    from pvcheck.config import RouteConfig


# --- values that cross the seams -----------------------------------------------------------
@dataclass(frozen=True)
class RouteObservation:
    """What one route answered: the last attempt's status, or the error that ended it."""

    name: str
    url: str
    status: int | None
    body_has_text: bool | None
    latency_s: float
    attempts: int
    error: str | None = None

    def answers(self, route: RouteConfig) -> bool:
        """The one rule: a listed status, and the body text when one is expected."""
        return self.status in route.expect_status and self.body_has_text is not False


class TierStatus(StrEnum):
    """What a driver reports for a tier (a harness's results.json uses the same words)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    UNVERIFIED = "unver"  # the driver cannot tell: never a pass

    @property
    def status(self) -> Status:
        return {TierStatus.PASS: Status.PASS, TierStatus.SKIP: Status.SKIP}.get(self, Status.FAIL)


@dataclass(frozen=True)
class TierResult:
    tier: str
    status: TierStatus
    detail: str = ""
    not_applicable: bool = False  # declared N/A by the recipe: shown as skipped, never passed


@dataclass
class DeployOutcome:
    """What a driver saw: per-tier results, the overlay attachment, and driver facts."""

    driver: str
    recipe: str
    stack: str  # what the checks call the app's stack: its name, or the harness pattern
    tiers: list[TierResult] = field(default_factory=list)
    # The stacks the app was deployed as, named by the harness or seen on the network: the
    # teardown check watches these. Empty: nothing to watch, which is an error, not a pass.
    stacks: list[str] = field(default_factory=list)
    attached: bool = False
    attach_detail: str = ""
    clean_teardown_reported: bool | None = None  # what the harness itself said, if anything
    no_secret_leak_reported: bool | None = None  # the harness's own leak scan of its artifacts
    info: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def take(self, results: HarnessReport) -> None:
        """What a harness's results file reports: tiers, flags and identifying facts."""
        self.tiers = list(results.tiers)
        self.clean_teardown_reported = results.clean_teardown
        self.no_secret_leak_reported = results.no_secret_leak
        self.info.update(results.info)


@dataclass(frozen=True)
class AdoptedRun:
    """The run a deploy proof adopted, as the report records it and STATUS names it."""

    run: str
    recipe: str
    finished: str  # when the run finished (UTC), or "" when its file did not say
    results: str  # where its results.json was read (the host command)
    link: str  # where it is published ("" when not configured)
    digest: str  # sha256 of its results.json as read ("" when unread): the review compares


class HarnessReport(Protocol):
    """What a harness's results file reports (pvcheck.harnessresults.HarnessResults)."""

    @property
    def tiers(self) -> list[TierResult]: ...
    @property
    def clean_teardown(self) -> bool | None: ...
    @property
    def no_secret_leak(self) -> bool | None: ...
    @property
    def info(self) -> dict[str, str]: ...


class LogUnreadable(Exception):
    """The docker log could not be read: a scan of it would prove nothing."""


# --- the seams -------------------------------------------------------------------------------
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
    The compose text is prepared first (interpolated, labelled and confined)."""

    def stack_deploy(
        self, stack: str, compose: str, env: Mapping[str, str] | None = None, where: str = ""
    ) -> None: ...
    def stack_rm(self, stacks: list[str]) -> None: ...
    def secret_create(self, name: str, value: bytes, labels: Mapping[str, str]) -> None: ...
    def exec(
        self, container: str, argv: list[str], stdin: bytes | None = None, max_stdout: int = 0
    ) -> bytes: ...
    def task_container(self, service: str, run_label: str) -> str: ...


class RouteProber(Protocol):
    """HTTP through the reverse proxy: one observation per route, in order (pvcheck.routes)."""

    def probe(self, routes: Sequence[RouteConfig]) -> list[RouteObservation]: ...


class HostCommands(Protocol):
    """Where host commands run: here or over ssh (pvcheck.hosts)."""

    @property
    def remote(self) -> bool: ...
    def describe(self) -> str: ...
    def argv(self, argv: list[str]) -> list[str]: ...
    def run(
        self, argv: list[str], timeout_s: float, stdin: str | None = None, max_stdout: int = 0
    ) -> tuple[int, str, str]:
        """Run argv on the host: (exit code, stdout, stderr). Not reaching the host raises
        TargetUnreachable; past the deadline, subprocess.TimeoutExpired."""
        ...

    def how(self, command: str) -> str: ...
    def failure(self, stderr: str) -> str:
        """What went wrong reaching the host, from the client's complaint."""
        ...


class LogSource(Protocol):
    """Where docker's log lines come from (pvcheck.logscan); raises LogUnreadable."""

    def describe(self) -> str: ...

    def lines(self, since: datetime, until: datetime) -> Iterator[str]: ...


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
    lab_engine: SwarmApi | None = None
