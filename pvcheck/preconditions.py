"""Stage preconditions (M1): the precondition phase is `## DONE` and the overlay network is the
one the config names (driver and subnet). Control-plane health is the facts stage's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pvcheck.config import Config, NetworkConfig
from pvcheck.hostfacts import NetworkFacts, parse_network
from pvcheck.protocol import has_done
from pvcheck.records import Check, Family, Gate, Status
from pvcheck.seams import Seams
from pvcheck.statefiles import read_state


@dataclass(frozen=True)
class Settings:
    phase: str  # the precondition phase's name
    status_file: Path  # its STATUS file, which must hold `## DONE`
    network: NetworkConfig

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        docs = cfg.docs
        return cls(docs.precondition_phase, docs.precondition_status, cfg.network)


@dataclass(frozen=True)
class Observation:
    done: bool | None  # None: the STATUS file does not exist
    network: NetworkFacts | None  # None: no such network
    done_s: float
    network_s: float


def gather(seams: Seams, settings: Settings) -> Observation:
    t0 = time.monotonic()
    text = read_state(settings.status_file)
    done = None if text is None else has_done(text)
    t1 = time.monotonic()
    inspect = seams.swarm.network(settings.network.name)
    network = parse_network(inspect) if inspect else None
    return Observation(done, network, t1 - t0, time.monotonic() - t1)


def judge(obs: Observation, settings: Settings) -> list[Check]:
    return [
        phase_done(settings.phase, str(settings.status_file), obs.done, obs.done_s),
        network_matches(settings.network, obs.network, obs.network_s),
    ]


def phase_done(phase: str, path: str, done: bool | None, seconds: float = 0.0) -> Check:
    """done is None when the file does not exist."""
    found = "file missing" if done is None else ("## DONE present" if done else "no ## DONE line")
    return Check(
        id=Family.PRE.id(f"{phase}-done"),
        gate=Gate.M1,
        status=Status.PASS if done else Status.FAIL,
        expected=f"{path} contains '## DONE'",
        found=found,
        detail="" if done else f"phase {phase} is not done: finish it before verifying",
        duration_s=seconds,
    )


def network_matches(cfg: NetworkConfig, net: NetworkFacts | None, seconds: float = 0.0) -> Check:
    check_id = Family.PRE.id("network")
    expected = f"network {cfg.name} ({cfg.driver}) with subnet {cfg.subnet}"
    if net is None:
        return Check(check_id, Gate.M1, Status.FAIL, expected, "network missing", "", seconds)
    found = f"network {net.name} ({net.driver}) with subnet {net.subnet or 'none'}"
    ok = net.subnet == cfg.subnet and net.driver == cfg.driver
    detail = "" if ok else f"expected subnet {cfg.subnet}, found {net.subnet or 'none'}"
    if net.driver != cfg.driver:
        detail = f"expected driver {cfg.driver}, found {net.driver}"
    status = Status.PASS if ok else Status.FAIL
    return Check(check_id, Gate.M1, status, expected, found, detail, seconds)
