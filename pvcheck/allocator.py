"""Stage allocator (M2): the bounded allocator reproduction. Throwaway published-port stacks on
the overlay, deployed and removed concurrently (the pattern that leaked endpoints in
production), with the network's endpoints measured at baseline, at peak and after the
allocator settles. `gather` refuses or runs it; `judge` (pure) checks the figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pvcheck.config import AllocatorConfig, Config
from pvcheck.facts import NetworkFacts, attribute, parse_network, settle_network
from pvcheck.records import Check, Family, Gate, Status, format_ts, skipped
from pvcheck.seams import Seams, SwarmApi
from pvcheck.stackcli import StackError
from pvcheck.stackfile import dump_compose, inject_labels
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, POLL_S

log = logging.getLogger(__name__)

KINDS = ("vips", "task_ips", "lb_endpoints", "containers")
# baseline, peak and after of a reproduction, as recorded in the report and the history.
FIGURES = ("used_before", "peak", "used_after", "leaked_total")


@dataclass(frozen=True)
class RoundFigures:
    round: int
    stacks: int
    baseline: dict[str, int]
    peak: dict[str, int]
    after: dict[str, int]
    allocated: bool  # every throwaway task got its addresses (reached running)
    settled: bool  # our addresses were all released (not merely stopped changing)
    seconds: float
    leaked_total: int = 0  # addresses only the throwaways can explain (see facts.attribute)
    others: int = 0  # change from unrelated services on the shared network (churn)
    # The stacks' own networks (one each, beside the shared one): those `docker stack rm`
    # left behind (a task still held them: the race), and those still there once their
    # tasks were gone and pvcheck removed the orphans by label: residue, by name.
    networks_orphaned: list[str] = field(default_factory=list)
    networks_left: list[str] = field(default_factory=list)
    rm_errors: list[str] = field(default_factory=list)

    @property
    def leaked(self) -> dict[str, int]:
        """Raw change per kind between baseline and after (includes others' churn)."""
        return {k: self.after[k] - self.baseline[k] for k in KINDS}


@dataclass
class AllocatorResult:
    network: str
    capacity: int
    used_before: int
    used_after: int
    started_at: datetime
    finished_at: datetime
    rounds: list[RoundFigures] = field(default_factory=list)

    @property
    def leaked_total(self) -> int:
        return sum(r.leaked_total for r in self.rounds)

    @property
    def leak_per_round(self) -> float:
        return self.leaked_total / len(self.rounds) if self.rounds else 0.0

    @property
    def headroom_before_pct(self) -> float:
        return 100.0 * (self.capacity - self.used_before) / self.capacity

    @property
    def headroom_after_pct(self) -> float:
        return 100.0 * (self.capacity - self.used_after) / self.capacity

    @property
    def projected_rounds(self) -> int | None:
        """Rounds like these before exhaustion at the measured leak rate; None: no leak."""
        if self.leak_per_round <= 0:
            return None
        return int((self.capacity - self.used_after) / self.leak_per_round)

    @property
    def peak(self) -> int:
        """The most endpoints the network held during any round."""
        return max((sum(r.peak.values()) for r in self.rounds), default=self.used_before)

    def figures(self) -> dict[str, int]:
        """The figures a review holds the run's report and its history record to."""
        return {k: int(getattr(self, k)) for k in FIGURES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "peak": self.peak,
            "capacity": self.capacity,
            "used_before": self.used_before,
            "used_after": self.used_after,
            "leaked_total": self.leaked_total,
            "leak_per_round": self.leak_per_round,
            "headroom_before_pct": round(self.headroom_before_pct, 3),
            "headroom_after_pct": round(self.headroom_after_pct, 3),
            "projected_rounds": self.projected_rounds,
            "started_at": format_ts(self.started_at),
            "finished_at": format_ts(self.finished_at),
            "rounds": [asdict(r) | {"leaked": r.leaked} for r in self.rounds],
        }


def _counts(facts: NetworkFacts | None) -> dict[str, int]:
    return {k: int(getattr(facts, k)) if facts else 0 for k in KINDS}


def throwaway_compose(stack: str, image: str, network: str, labels: dict[str, str]) -> str:
    """A recipe-shaped stack, as the ones whose concurrent removal leaked endpoints: its own
    overlay network beside the shared one, a port published in ingress mode (a swarm-chosen
    port), and Traefik labels for a host nobody resolves. Every object carries `labels`."""
    doc = {
        "services": {
            "app": {
                "image": image,
                "command": ["sleep", "3600"],
                "networks": ["proxy", "internal"],
                "ports": [{"target": 80, "mode": "ingress"}],
                "stop_signal": "KILL",  # busybox sleep as PID 1 ignores SIGTERM
                "stop_grace_period": "1s",
                "deploy": {
                    "labels": {
                        "traefik.enable": "true",
                        f"traefik.http.routers.{stack}.rule": f"Host(`{stack}.pvcheck.invalid`)",
                        f"traefik.http.services.{stack}.loadbalancer.server.port": "80",
                    }
                },
            }
        },
        "networks": {"proxy": {"external": True, "name": network}, "internal": {}},
    }
    labelled, _ = inject_labels(doc, labels, where=f"throwaway {stack}")
    return dump_compose(labelled)


def refusal(cfg: AllocatorConfig, before: NetworkFacts | None) -> str | None:
    """Pure: why the reproduction must not start, or None."""
    if before is None:
        return "the overlay network is missing"
    if before.headroom_pct < cfg.headroom_floor_pct:
        return (
            f"headroom {before.headroom_pct:.2f}% is below the floor "
            f"{cfg.headroom_floor_pct:g}%: the reproduction would risk real exhaustion"
        )
    return None


@dataclass(frozen=True)
class Settings:
    allocator: AllocatorConfig
    network: str
    run_id: str

    @classmethod
    def from_config(cls, cfg: Config, run_id: str) -> Settings:
        return cls(cfg.allocator, cfg.network.name, run_id)


@dataclass(frozen=True)
class Observation:
    refused: str | None  # why it did not start; None: it ran
    result: AllocatorResult | None


def gather(
    seams: Seams, settings: Settings, progress: Callable[[str], None] = log.info
) -> Observation:
    inspect = seams.swarm.network(settings.network)
    why = refusal(settings.allocator, parse_network(inspect) if inspect else None)
    if why:
        return Observation(why, None)
    return Observation(None, reproduce(seams, settings, progress))


def judge(obs: Observation, settings: Settings) -> list[Check]:
    if obs.result is None:
        why = f"refused: {obs.refused}"
        return [skipped(Family.ALLOC.id("stage"), Gate.M2, "the reproduction runs", why)]
    return judge_allocator(obs.result, settings.allocator)


def reproduce(
    seams: Seams,
    settings: Settings,
    progress: Callable[[str], None] = log.info,
) -> AllocatorResult:
    """Run the configured rounds; everything created carries the run label."""
    alloc, net, run_id, swarm = settings.allocator, settings.network, settings.run_id, seams.swarm
    suffix = run_id.rsplit("-", 1)[-1]
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "throwaway"}
    first = parse_network(swarm.network(net) or {})
    result = AllocatorResult(
        net, first.capacity, first.used, first.used, datetime.now(UTC), datetime.now(UTC)
    )
    for rnd in range(1, alloc.rounds + 1):
        t0 = time.monotonic()
        baseline = parse_network(swarm.network(net) or {})
        names = [f"pvc-alloc-{suffix}-r{rnd}-{i}" for i in range(1, alloc.batch + 1)]
        progress(
            f"round {rnd}: deploying {len(names)} throwaway stacks on {net} "
            f"({alloc.concurrency} at a time); baseline {baseline.used} endpoints"
        )
        composes = [(n, throwaway_compose(n, alloc.image, net, labels)) for n in names]
        with ThreadPoolExecutor(max_workers=alloc.concurrency) as pool:
            list(
                pool.map(
                    lambda nc: seams.stacks.stack_deploy(nc[0], nc[1], {}, "throwaway"), composes
                )
            )
        allocated = _wait_allocated(swarm, run_id, len(names), alloc.settle_timeout_s)
        peak = parse_network(swarm.network(net) or {})
        progress(
            f"round {rnd}: peak {peak.used} endpoints ({peak.vips} VIPs, "
            f"{peak.task_ips} task IPs); all allocated: {allocated}"
        )
        # The incident's pattern: every stack removed at once, racing the allocator.
        with ThreadPoolExecutor(max_workers=alloc.concurrency) as pool:
            complaints = dict(
                zip(names, pool.map(lambda n: _stack_rm(seams, n), names), strict=True)
            )
        rm_errors = [e for e in complaints.values() if e]
        progress(
            f"round {rnd}: docker stack rm of {len(names)} stacks concurrently "
            f"({len(rm_errors)} complained); waiting for the allocator"
        )
        prefix = f"pvc-alloc-{suffix}-r{rnd}-"
        after, settled = settle_network(
            swarm, net, released(baseline, prefix), timeout_s=alloc.settle_timeout_s
        )
        # A network `docker stack rm` could not remove: a task still held it (the race).
        orphaned = [f"{n}_internal" for n, e in complaints.items() if e and "network" in e]
        networks_left = _remove_orphans(swarm, run_id, prefix, alloc.settle_timeout_s)
        share = attribute(baseline, after, prefix) if after else None
        figures = RoundFigures(
            rnd,
            len(names),
            _counts(baseline),
            _counts(peak),
            _counts(after),
            allocated,
            settled,
            round(time.monotonic() - t0, 2),
            share.leaked if share else 0,
            share.others if share else 0,
            orphaned,
            networks_left,
            rm_errors,
        )
        result.rounds.append(figures)
        result.used_after = after.used if after else result.used_after
        progress(
            f"round {rnd}: after {result.used_after} endpoints; leaked {figures.leaked_total} "
            f"(raw change {figures.leaked}, other services {figures.others:+d})"
        )
    result.finished_at = datetime.now(UTC)
    return result


def _stack_rm(seams: Seams, stack: str) -> str | None:
    """`docker stack rm STACK`; what it complained about (a network still in use), or None."""
    try:
        seams.stacks.stack_rm([stack])
    except StackError as exc:
        return str(exc)
    return None


def _remove_orphans(swarm: SwarmApi, run_id: str, prefix: str, timeout_s: float) -> list[str]:
    """Remove the round's stack networks `docker stack rm` left (by this run's label), as an
    operator would once the tasks are gone; those still held past the deadline are left."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = swarm.networks([f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}=throwaway"])
        mine = [n for n in found if str(n.get("Name", "")).startswith(prefix)]
        left = sorted(str(n["Name"]) for n in mine if not swarm.remove_network(n["Id"]))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)


def released(baseline: NetworkFacts, prefix: str) -> Callable[[NetworkFacts], bool]:
    return lambda facts: attribute(baseline, facts, prefix).leaked == 0


def _wait_allocated(swarm: SwarmApi, run_id: str, expected: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        services = swarm.services({LABEL_RUN: run_id, LABEL_ROLE: "throwaway"})
        running = sum(
            1 for s in services if (s.get("ServiceStatus") or {}).get("RunningTasks", 0) >= 1
        )
        if running >= expected:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def judge_allocator(result: AllocatorResult, cfg: AllocatorConfig) -> list[Check]:
    """Pure: the allocation, leak and headroom checks of the reproduction."""
    rounds = result.rounds
    stuck = [r.round for r in rounds if not r.allocated]
    leaks = ", ".join(f"round {r.round}: {r.leaked_total}" for r in rounds)
    stacks_left = [n for r in rounds for n in r.networks_left]
    orphaned = [n for r in rounds for n in r.networks_orphaned]
    tolerance = cfg.leak_tolerance * len(rounds)
    projected = result.projected_rounds
    # Each check judges every round's figures: the reproduction's whole time.
    seconds = (result.finished_at - result.started_at).total_seconds()
    return [
        Check(
            Family.ALLOC.id("allocated"),
            Gate.M2,
            Status.FAIL if stuck else Status.PASS,
            "every throwaway task gets its addresses and runs",
            "all allocated" if not stuck else f"tasks not allocated in rounds {stuck}",
            "" if not stuck else "tasks stuck in New/Pending: the VIP exhaustion symptom",
            seconds,
        ),
        Check(
            Family.ALLOC.id("leak"),
            Gate.M2,
            Status.PASS if result.leaked_total <= tolerance else Status.FAIL,
            f"leaked <= {cfg.leak_tolerance} per round ({tolerance} over {len(rounds)} rounds)",
            f"leaked {result.leaked_total} endpoints ({leaks})",
            "projected rounds before exhaustion: "
            + ("unbounded (no leak)" if projected is None else str(projected)),
            seconds,
        ),
        Check(
            Family.ALLOC.id("networks"),
            Gate.M2,
            Status.FAIL if stacks_left else Status.PASS,
            "every throwaway stack's own network is released once its tasks are gone",
            f"{sum(r.stacks for r in rounds)} stack networks created; "
            + (
                f"docker stack rm left {len(orphaned)} in use ({', '.join(orphaned)}); "
                if orphaned
                else ""
            )
            + (f"left: {', '.join(stacks_left)}" if stacks_left else "all removed"),
            "; ".join(e for r in rounds for e in r.rm_errors)[:500],
            seconds,
        ),
        Check(
            Family.ALLOC.id("headroom"),
            Gate.M2,
            Status.PASS if result.headroom_after_pct >= cfg.headroom_floor_pct else Status.FAIL,
            f"headroom after >= {cfg.headroom_floor_pct:g}%",
            f"{result.headroom_before_pct:.3f}% before, {result.headroom_after_pct:.3f}% after "
            f"({result.used_after}/{result.capacity} used)",
            "",
            seconds,
        ),
    ]
