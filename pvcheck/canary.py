"""Lab only: make the real allocator log the VIP-exhaustion signature on a throwaway tiny
network, and show the upgrade guard's detection counts it in the real docker log.

Never on a real host: its upgrade guard would see the line and restart docker.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from pvcheck.procs import count_with
from pvcheck.records import VIP_SIGNATURE
from pvcheck.seams import LogSource, SwarmApi
from pvcheck.stacks import remove_labelled
from pvcheck.swarm import LABEL_LAB, LABEL_ROLE, LABEL_RUN

log = logging.getLogger(__name__)

CANARY_SUBNET = "10.254.254.0/29"  # 5 usable addresses: seven services cannot all get a VIP
CANARY_SERVICES = 7


def run_canary(
    swarm: SwarmApi,
    run_id: str,
    image: str,
    detect: list[str],
    source: LogSource,
    timeout_s: float = 60.0,
) -> tuple[int, str, str]:
    """(signature lines the detection counted, since when, the canary network)."""
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "canary"}
    suffix = run_id.rsplit("-", 1)[-1]
    net = f"pvc-canary-{suffix}"
    since = datetime.now(UTC) - timedelta(seconds=2)
    try:
        log.info("docker network create -d overlay --subnet %s %s", CANARY_SUBNET, net)
        net_id = swarm.create_overlay(net, CANARY_SUBNET, labels)
        # Services without tasks: each still needs a VIP, so the last two are refused with
        # the real signature, and there is no task whose removal could race the allocator.
        for i in range(1, CANARY_SERVICES + 1):
            swarm.create_probe_service(f"{net}-{i}", image, labels, net_id)
        deadline = time.monotonic() + timeout_s
        count = 0
        while time.monotonic() < deadline:
            text = "".join(
                line if line.endswith("\n") else line + "\n"
                for line in source.lines(since, datetime.now(UTC))
                if VIP_SIGNATURE in line
            )
            count = count_with(detect, text) or 0
            if count > 0:
                break
            time.sleep(2)
        shown = f"{net} ({CANARY_SUBNET}), {CANARY_SERVICES} services"
        return count, f"{since:%H:%M:%SZ}", shown
    finally:
        left = remove_labelled(swarm, f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}=canary", timeout_s=60)
        log.info("canary removed; left: %s", {k: v for k, v in left.items() if v} or "nothing")


def lab_engine_problem(swarm: SwarmApi, docker_host: str, network: str) -> str | None:
    """Why this engine is not the built-in lab's (None when it is): lab-only actions run only
    on the local socket, against a `network` the lab itself created (label pvcheck.lab=1)."""
    if not docker_host.startswith("unix://"):
        return f"{docker_host} is not the local engine"
    net = swarm.network(network)
    if net is None:
        return f"the engine has no {network} network"
    if (net.get("Labels") or {}).get(LABEL_LAB) != "1":
        return f"{network} on this engine was not made by the lab (no {LABEL_LAB}=1 label)"
    return None
