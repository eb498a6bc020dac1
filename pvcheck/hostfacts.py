"""The host's facts as typed records, parsed from the engine's answers: the overlay's
endpoints and capacity, the control-plane services, the stacks; where a change in the
endpoint count came from; and a wait for released addresses to settle.

Shared by the stages that read the network (facts, deploy, allocator, preconditions) and
by the review, so none of them imports another stage for it.

Gathering costs a fixed number of API requests however large the swarm is: one verbose
network inspect (every service's VIP and task IPs, swarm-wide), one service list (with
status) and one task list for the control-plane services.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pvcheck import progress
from pvcheck.records import format_ts
from pvcheck.seams import SwarmApi
from pvcheck.swarm import LABEL_STACK, POLL_S

FAILED_TASK_STATES = {"failed", "rejected", "orphaned"}


def overlay_capacity(subnet: str) -> int:
    """Usable addresses as docker's ip-util-check counts them: network, gateway, broadcast."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    return (1 << (32 - prefix)) - 3


@dataclass(frozen=True)
class NetworkFacts:
    name: str
    subnet: str
    driver: str
    capacity: int
    vips: int
    task_ips: int
    lb_endpoints: int
    containers: int  # attached containers that are not swarm tasks (docker run --network)
    services: list[str] = field(default_factory=list)
    # Addresses (VIP + task IPs) per service name on the network, to tell which service an
    # endpoint belongs to when the total moves.
    per_service: dict[str, int] = field(default_factory=dict)

    @property
    def used(self) -> int:
        return self.vips + self.task_ips + self.lb_endpoints + self.containers

    @property
    def headroom_pct(self) -> float:
        return 100.0 * (self.capacity - self.used) / self.capacity if self.capacity > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.name} subnet {self.subnet}, {self.used} endpoints: {self.vips} VIPs, "
            f"{self.task_ips} task IPs, {self.lb_endpoints} LB, {self.containers} containers; "
            f"capacity {self.capacity}, headroom {self.headroom_pct:.2f}%"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(used=self.used, headroom_pct=round(self.headroom_pct, 3))
        return out


def parse_network(inspect: dict[str, Any]) -> NetworkFacts:
    """Pure: facts from `docker network inspect --verbose` (one call, swarm-wide)."""
    configs = (inspect.get("IPAM") or {}).get("Config") or [{}]
    subnet = str(configs[0].get("Subnet", ""))
    services = inspect.get("Services") or {}
    task_names = set()
    vips = task_ips = 0
    for svc in services.values():
        if svc.get("VIP"):
            vips += 1
        for task in svc.get("Tasks") or []:
            if task.get("EndpointIP"):
                task_ips += 1
            task_names.add(task.get("Name"))
    lb = containers = 0
    for key, ctr in (inspect.get("Containers") or {}).items():
        if key.startswith("lb-"):
            lb += 1
        elif ctr.get("Name") not in task_names:
            containers += 1
    return NetworkFacts(
        name=str(inspect.get("Name", "")),
        subnet=subnet,
        driver=str(inspect.get("Driver", "")),
        capacity=overlay_capacity(subnet) if subnet else 0,
        vips=vips,
        task_ips=task_ips,
        lb_endpoints=lb,
        containers=containers,
        services=sorted(k for k in services if k),
        per_service={
            k: (1 if v.get("VIP") else 0)
            + sum(1 for t in v.get("Tasks") or [] if t.get("EndpointIP"))
            for k, v in services.items()
            if k
        },
    )


@dataclass(frozen=True)
class ServiceFacts:
    name: str
    exists: bool
    running: int = 0
    desired: int = 0
    task_states: dict[str, int] = field(default_factory=dict)
    restarts: int = 0

    @property
    def healthy(self) -> bool:
        return self.exists and self.desired > 0 and self.running >= self.desired

    def summary(self) -> str:
        if not self.exists:
            return f"{self.name}: missing"
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.task_states.items())) or "no tasks"
        return (
            f"{self.name}: {self.running}/{self.desired} running; tasks: {states}; "
            f"recent failures {self.restarts}"
        )


def _ts(value: str) -> datetime:
    # Docker timestamps carry nanoseconds; fromisoformat takes at most microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def parse_services(
    wanted: list[str],
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    now: datetime,
    restart_window: timedelta,
) -> list[ServiceFacts]:
    """Pure: replicas, current task states and recent task failures of each wanted service."""
    by_name = {s["Spec"]["Name"]: s for s in services}
    by_service: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_service.setdefault(task.get("ServiceID", ""), []).append(task)
    out = []
    for name in wanted:
        svc = by_name.get(name)
        if svc is None:
            out.append(ServiceFacts(name, exists=False))
            continue
        status = svc.get("ServiceStatus") or {}
        mine = by_service.get(svc["ID"], [])
        current = Counter(
            t["Status"]["State"] for t in mine if t.get("DesiredState") in ("running", "ready")
        )
        since = now - restart_window
        restarts = sum(
            1
            for t in mine
            if t["Status"]["State"] in FAILED_TASK_STATES and _ts(t["Status"]["Timestamp"]) >= since
        )
        out.append(
            ServiceFacts(
                name,
                exists=True,
                running=int(status.get("RunningTasks", 0)),
                desired=int(status.get("DesiredTasks", 0)),
                task_states=dict(current),
                restarts=restarts,
            )
        )
    return out


def parse_stacks(services: list[dict[str, Any]]) -> dict[str, int]:
    """Pure: `docker stack ls` equivalent, stack name -> number of services."""
    counts: Counter[str] = Counter()
    for svc in services:
        stack = (svc["Spec"].get("Labels") or {}).get(LABEL_STACK)
        if stack:
            counts[str(stack)] += 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class HostFacts:
    taken_at: str
    network: NetworkFacts | None
    services: list[ServiceFacts]
    stacks: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "network": self.network.as_dict() if self.network else None,
            "services": [asdict(s) | {"healthy": s.healthy} for s in self.services],
            "stacks": self.stacks,
        }


def gather_facts(
    swarm: SwarmApi, network: str, control_plane: list[str], restart_window: timedelta
) -> HostFacts:
    """Three API requests, independent of swarm size."""
    now = datetime.now(UTC)
    inspect = swarm.network(network)
    services = swarm.services()
    wanted_ids = [s["ID"] for s in services if s["Spec"]["Name"] in set(control_plane)]
    tasks = swarm.tasks(wanted_ids) if wanted_ids else []
    return HostFacts(
        taken_at=format_ts(now),
        network=parse_network(inspect) if inspect else None,
        services=parse_services(control_plane, services, tasks, now, restart_window),
        stacks=parse_stacks(services),
    )


@dataclass(frozen=True)
class Attribution:
    """Where a change in a network's endpoint count came from, between two readings."""

    ours_left: int  # addresses still held by services whose names start with our prefix
    others: int  # growth (or shrink) of other, named services: unrelated churn
    unexplained: int  # what no named service accounts for: a leak inside the allocator

    @property
    def leaked(self) -> int:
        return self.ours_left + max(0, self.unexplained)


def attribute(
    baseline: NetworkFacts, after: NetworkFacts, prefix: str | tuple[str, ...]
) -> Attribution:
    """Pure: split after.used - baseline.used into our leftovers, others' churn and the rest."""
    ours = sum(n for name, n in after.per_service.items() if name.startswith(prefix))
    names = {
        n for n in set(baseline.per_service) | set(after.per_service) if not n.startswith(prefix)
    }
    others = sum(after.per_service.get(n, 0) - baseline.per_service.get(n, 0) for n in names)
    return Attribution(ours, others, after.used - baseline.used - ours - others)


def _counts(facts: NetworkFacts | None) -> tuple[int, ...] | None:
    return (
        None
        if facts is None
        else (facts.vips, facts.task_ips, facts.lb_endpoints, facts.containers)
    )


def settle_network(
    swarm: SwarmApi,
    network: str,
    done: Callable[[NetworkFacts], bool],
    timeout_s: float,
    poll_s: float = POLL_S,
    stable_s: float = 6.0,
) -> tuple[NetworkFacts | None, bool]:
    """Poll the network until `done(facts)`, or until its counts have not changed for
    `stable_s` seconds, or the deadline. Returns the last facts and whether done() held.

    The allocator frees addresses asynchronously (10-20 s in the lab), so a single read
    right after a removal would report a leak that is not one; stability is judged over
    time, not over a number of polls, so a faster poll never ends the wait sooner.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last: NetworkFacts | None = None
    changed_at = time.monotonic()
    while True:
        progress.report(f"waiting for {network}'s addresses to settle", started, deadline)
        inspect = swarm.network(network)
        facts = parse_network(inspect) if inspect else None
        if facts is not None and done(facts):
            return facts, True
        now = time.monotonic()
        if last is None or _counts(last) != _counts(facts):
            changed_at = now
        last = facts
        if now - changed_at >= stable_s or now >= deadline:
            return facts, False
        time.sleep(poll_s)
