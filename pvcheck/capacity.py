"""What the allocator holds on a network, counted by the allocator itself.

`docker network inspect` lists endpoints. A task that ends after its network was removed is
never deallocated and appears in no list (moby/moby#37338, moby/swarmkit#3230): an endpoint
count is blind to the leak that exhausts a network. Two counts that are not:

- the engine's IPAM status (API >= 1.52, moby/moby#50917 and #50946):
  `Status.IPAM.Subnets[<cidr>]` with `IPsInUse` and `DynamicIPsAvailable`;
- a fill probe: task-less services created one at a time until the allocator refuses a VIP
  or the probe reaches its bound; what was handed out is what is allocatable.

The probe is bounded by what should be free, so it meets a refusal (and the allocator logs
one VIP line naming the probe's own service) only when addresses really are missing.
Probe services have no task, so removing them cannot race the allocator.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pvcheck.seams import SwarmApi

log = logging.getLogger(__name__)

# How long a probe service may wait for its VIP before it counts as refused: the lab hands
# one out in a few milliseconds; an allocator that cannot never does.
VIP_WAIT_S = 3.0

Method = Literal["ipam-status", "fill-probe", "endpoints"]


@dataclass(frozen=True)
class IpamStatus:
    """The engine's own count for one IPv4 subnet (API >= 1.52)."""

    subnet: str
    in_use: int  # IPsInUse: reserved addresses included
    available: int  # DynamicIPsAvailable


def _count(value: Any) -> int | None:
    # A count from the engine: a non-negative int, never a bool or text.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def ipam_status(inspect: Mapping[str, Any]) -> IpamStatus | None:
    """Pure: the IPv4 subnet's IPAM status from a network inspect, None on engines (or API
    versions) that do not report it, or when its shape is not the documented one."""
    status = inspect.get("Status")
    ipam = status.get("IPAM") if isinstance(status, Mapping) else None
    subnets = ipam.get("Subnets") if isinstance(ipam, Mapping) else None
    if not isinstance(subnets, Mapping):
        return None
    for cidr, figures in subnets.items():
        try:
            if ipaddress.ip_network(str(cidr)).version != 4:
                continue
        except ValueError:
            continue
        if not isinstance(figures, Mapping):
            return None
        in_use, available = (
            _count(figures.get("IPsInUse")),
            _count(figures.get("DynamicIPsAvailable")),
        )
        if in_use is None or available is None:
            return None
        return IpamStatus(str(cidr), in_use, available)
    return None


@dataclass(frozen=True)
class Fill:
    """One fill probe: how many probe services got a VIP before a refusal or the bound."""

    limit: int
    allocated: int
    refused_ids: tuple[str, ...]  # services without a VIP when the wait ended
    seconds: float
    # Every service the probe created: the allocator may log a refusal for any of them (one
    # refused, then allocated on a retry, is not in refused_ids), and each such line is ours.
    created: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.refused_ids)


def _vip_on(service: Mapping[str, Any] | None, network_id: str | None) -> bool:
    vips = ((service or {}).get("Endpoint") or {}).get("VirtualIPs") or []
    return any(network_id is None or v.get("NetworkID") == network_id for v in vips)


def fill(
    swarm: SwarmApi,
    network_id: str | None,
    limit: int,
    labels: dict[str, str],
    image: str,
    prefix: str,
    wait_s: float = VIP_WAIT_S,
    batch: int = 1,
) -> Fill:
    """Create up to `limit` probe services on the network (None: ingress, through a published
    port), `batch` at a time, stopping after the first batch with a service the allocator
    refuses; then remove them all. One at a time (the default) means at most one refusal,
    so one VIP line in the docker log; a larger batch is faster where no refusal is expected.
    Every service carries `labels`, so a run killed mid-probe leaves only labelled objects."""
    t0 = time.monotonic()
    created: list[str] = []
    allocated = 0
    refused: list[str] = []
    try:
        while allocated < limit and not refused:
            size = min(batch, limit - allocated)
            ids = [
                swarm.create_probe_service(
                    f"{prefix}-{len(created) + i}", image, labels, network_id
                )
                for i in range(size)
            ]
            created += ids
            pending = set(ids)
            deadline = time.monotonic() + wait_s
            while pending and time.monotonic() < deadline:
                pending = {sid for sid in pending if not _vip_on(swarm.service(sid), network_id)}
                if pending:
                    time.sleep(0.05)
            allocated += size - len(pending)
            refused = sorted(pending)
    finally:
        for sid in created:
            swarm.remove_service(sid)
    return Fill(limit, allocated, tuple(refused), round(time.monotonic() - t0, 3), tuple(created))


@dataclass(frozen=True)
class HeldCount:
    """A network's addresses as the allocator holds them. `free` is exact when `exact`,
    else a lower bound (a probe that stopped at its bound without a refusal)."""

    network: str
    capacity: int
    endpoints: int  # what `docker network inspect` lists
    free: int
    exact: bool
    method: Method

    @property
    def held(self) -> int:
        """Addresses the allocator holds (an upper bound unless exact)."""
        return self.capacity - self.free

    @property
    def leaked(self) -> int | None:
        """Held by the allocator but listed nowhere; None when not counted exactly."""
        if not self.exact or self.method == "endpoints":
            return None
        return max(0, self.held - self.endpoints)

    @property
    def headroom_pct(self) -> float:
        return 100.0 * self.free / self.capacity if self.capacity > 0 else 0.0

    def summary(self) -> str:
        free = f"{self.free}" if self.exact else f"at least {self.free}"
        leak = "" if self.leaked is None else f", {self.leaked} held but listed nowhere"
        return (
            f"{self.network}: {free}/{self.capacity} allocatable ({self.method}; "
            f"{self.endpoints} endpoints listed{leak})"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "held": self.held,
            "leaked": self.leaked,
            "headroom_pct": round(self.headroom_pct, 3),
        }


def count_held(
    network: str,
    capacity: int,
    endpoints: int,
    status: IpamStatus | None = None,
    probe: Fill | None = None,
) -> HeldCount:
    """Pure: the best count there is. The engine's status first; else the probe (exact when
    it was refused, or when it filled everything the endpoint list leaves free); else the
    endpoint list, which cannot see a leak."""
    if status is not None:
        free = min(capacity, status.available)
        return HeldCount(network, capacity, endpoints, free, True, "ipam-status")
    if probe is not None:
        exact = probe.refused or probe.allocated >= capacity - endpoints
        return HeldCount(network, capacity, endpoints, probe.allocated, exact, "fill-probe")
    return HeldCount(network, capacity, endpoints, max(0, capacity - endpoints), True, "endpoints")
