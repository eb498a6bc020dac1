"""Stage facts (M1): the overlay network's endpoints and headroom, the control-plane services'
health and the stacks, before and after the run. The parsers live in pvcheck.hostfacts;
`gather` reads the facts, `judge` checks them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from pvcheck.config import Config
from pvcheck.hostfacts import HostFacts, NetworkFacts, ServiceFacts, gather_facts
from pvcheck.records import Check, Family, Gate, Status
from pvcheck.seams import Seams

# --- the stage -------------------------------------------------------------------------------
BEFORE, AFTER = "before", "after"


@dataclass(frozen=True)
class Settings:
    network: str
    control_plane: list[str]
    restart_window: timedelta
    headroom_warn_pct: float

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        return cls(
            cfg.network.name,
            list(cfg.services.control_plane),
            timedelta(hours=cfg.services.restart_window_h),
            cfg.network.headroom_warn_pct,
        )


@dataclass(frozen=True)
class Observation:
    when: str  # before | after | review
    facts: HostFacts
    seconds: float
    requests: int  # docker API requests the reading cost


def gather(seams: Seams, settings: Settings, when: str = BEFORE) -> Observation:
    t0, requests = time.monotonic(), seams.swarm.requests
    facts = gather_facts(
        seams.swarm, settings.network, settings.control_plane, settings.restart_window
    )
    return Observation(when, facts, time.monotonic() - t0, seams.swarm.requests - requests)


def judge(obs: Observation, settings: Settings) -> list[Check]:
    """One health check per control-plane service; the headroom from the first reading."""
    checks = [service_healthy(s, obs.when, obs.seconds) for s in obs.facts.services]
    if obs.when == BEFORE:
        checks.append(headroom(obs.facts.network, settings.headroom_warn_pct, obs.seconds))
    return checks


def service_healthy(svc: ServiceFacts, when: str = BEFORE, seconds: float = 0.0) -> Check:
    expected = "running replicas = desired (> 0), tasks Running"
    detail = ""
    if not svc.exists:
        detail = f"service {svc.name} does not exist"
    elif not svc.healthy:
        detail = f"service {svc.name} has {svc.running}/{svc.desired} replicas running"
    return Check(
        Family.SVC.id(svc.name) + ("" if when == BEFORE else f".{when}"),
        Gate.M1,
        Status.PASS if svc.healthy else Status.FAIL,
        expected,
        svc.summary(),
        detail,
        seconds,
    )


def headroom(net: NetworkFacts | None, warn_pct: float, seconds: float = 0.0) -> Check:
    check_id = Family.FACTS.id("headroom")
    expected = f"headroom >= {warn_pct:g}% of capacity"
    if net is None:
        return Check(check_id, Gate.M1, Status.SKIP, expected, "no network", "network missing")
    ok = net.headroom_pct >= warn_pct
    return Check(
        check_id,
        Gate.M1,
        Status.PASS if ok else Status.FAIL,
        expected,
        f"{net.used}/{net.capacity} used, headroom {net.headroom_pct:.2f}%",
        "" if ok else "the network is close to exhaustion",
        seconds,
    )


def unavailable(when: str, error: str) -> Check:
    """The host could not give its facts (lost during the run, engine down)."""
    return Check(Family.FACTS.id(when), Gate.M1, Status.ERROR, f"host facts {when} the run", error)
