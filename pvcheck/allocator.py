"""Stage allocator (M2): the bounded allocator reproduction, and the allocator's own count.

The incident's pattern: recipe-shaped throwaway stacks (an external shared overlay and an
internal network each) deployed and removed by concurrent `docker stack rm`. The rounds run
on a scratch overlay that plays the shared network's role, never on the real one: what the
race leaks (about one address per removed task, invisible to `network inspect`) dies with
the scratch network. After the rounds the allocator itself says what it still holds there
(pvcheck.capacity): the engine's IPAM status, or a fill probe. Ingress is measured before
anything is created. `gather` refuses or runs it; `judge` (pure) checks the figures, and
forecasts when the real networks would run out at the measured leak.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pvcheck.capacity import HeldCount, count_held, fill, ipam_status
from pvcheck.compose import dump_compose, inject_labels
from pvcheck.config import AllocatorConfig, Config
from pvcheck.hostfacts import NetworkFacts, attribute, parse_network, settle_network
from pvcheck.records import FIGURES, Check, Family, Gate, Status, format_ts, skipped
from pvcheck.safeio import writable_by_others
from pvcheck.seams import Seams, SwarmApi
from pvcheck.stackcli import StackError
from pvcheck.stacks import remove_services_gently
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, POLL_S

log = logging.getLogger(__name__)

KINDS = ("vips", "task_ips", "lb_endpoints", "containers")


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
    leaked_total: int = 0  # addresses only the throwaways can explain (see hostfacts.attribute)
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
    scratch: str = ""  # the overlay the rounds ran on, in the shared network's role
    scratch_left: bool = False  # it could not be removed (residue)
    removal: str = "concurrent"
    # The allocator's own counts: the scratch network after the rounds (what the race
    # leaked), and the shared network and ingress before and after.
    scratch_count: HeldCount | None = None
    shared_before: HeldCount | None = None
    shared_after: HeldCount | None = None
    ingress: HeldCount | None = None
    # Every probe service the run created (not written to the report: the log scan keeps the
    # ones its VIP lines name).
    probe_ids: list[str] = field(default_factory=list)
    probe_s: float = 0.0  # seconds the capacity probes took
    removals_per_day: float = 0.0  # the host's task removals a day, for the forecast
    ingress_removals_per_day: float = 0.0  # of them, published-port tasks
    rate_source: str = "config"
    engine_version: str = ""

    @property
    def removed_tasks(self) -> int:
        return sum(r.stacks for r in self.rounds)

    @property
    def engine_leaked(self) -> int | None:
        """Addresses the allocator still held on the scratch network after every throwaway
        was gone: the engine's leak under the incident's pattern (None: not counted)."""
        return self.scratch_count.leaked if self.scratch_count else None

    @property
    def leak_per_removal(self) -> float | None:
        leaked = self.engine_leaked
        return None if leaked is None or not self.removed_tasks else leaked / self.removed_tasks

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
            "scratch": self.scratch,
            "scratch_left": self.scratch_left,
            "removal": self.removal,
            "removed_tasks": self.removed_tasks,
            "engine_leaked": self.engine_leaked,
            "leak_per_removal": self.leak_per_removal,
            "scratch_count": self.scratch_count.as_dict() if self.scratch_count else None,
            "shared_before": self.shared_before.as_dict() if self.shared_before else None,
            "shared_after": self.shared_after.as_dict() if self.shared_after else None,
            "ingress": self.ingress.as_dict() if self.ingress else None,
            "probe_s": self.probe_s,
            "removals_per_day": self.removals_per_day,
            "rate_source": self.rate_source,
            "forecast": [f.as_dict() for f in forecasts(self)],
            "engine_version": self.engine_version,
            "advice": engine_advice(self.engine_version, self.engine_leaked),
        }


def _counts(facts: NetworkFacts | None) -> dict[str, int]:
    return {k: int(getattr(facts, k)) if facts else 0 for k in KINDS}


# Ends on SIGTERM as a real app does (busybox `sleep` as PID 1 ignores it): the task stops
# inside its grace period, the way the incident's tasks stopped.
APP_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def throwaway_compose(
    stack: str,
    image: str,
    network: str,
    labels: dict[str, str],
    *,
    publish: bool = False,
    grace_s: float = 10.0,
) -> str:
    """A recipe-shaped stack, as the ones whose concurrent removal leaked addresses: its own
    overlay network beside the shared one (external), Traefik labels for a host nobody
    resolves, and a port published in ingress mode only when `publish`. Every object
    carries `labels`."""
    app: dict[str, object] = {
        "image": image,
        "command": APP_COMMAND,
        "networks": ["proxy", "internal"],
        "stop_grace_period": f"{grace_s:g}s",
        "deploy": {
            "labels": {
                "traefik.enable": "true",
                f"traefik.http.routers.{stack}.rule": f"Host(`{stack}.pvcheck.invalid`)",
                f"traefik.http.services.{stack}.loadbalancer.server.port": "80",
            }
        },
    }
    if publish:
        app["ports"] = [{"target": 80, "mode": "ingress"}]
    doc = {
        "services": {"app": app},
        "networks": {"proxy": {"external": True, "name": network}, "internal": {}},
    }
    labelled, _ = inject_labels(doc, labels, where=f"throwaway {stack}")
    return dump_compose(labelled)


def overlapping(subnet: str, networks: list[dict[str, Any]]) -> list[str]:
    """Pure: names of the networks whose subnets overlap `subnet`."""
    mine = ipaddress.ip_network(subnet)
    hits = []
    for net in networks:
        for pool in (net.get("IPAM") or {}).get("Config") or []:
            try:
                other = ipaddress.ip_network(str(pool.get("Subnet", "")), strict=False)
            except ValueError:
                continue
            if other.version == mine.version and other.overlaps(mine):
                hits.append(str(net.get("Name", "?")))
    return sorted(set(hits))


def refusal(
    cfg: AllocatorConfig,
    before: NetworkFacts | None,
    ingress: HeldCount | None = None,
    clashes: list[str] | None = None,
) -> str | None:
    """Pure: why the reproduction must not start, or None."""
    if before is None:
        return "the overlay network is missing"
    if before.headroom_pct < cfg.headroom_floor_pct:
        return (
            f"headroom {before.headroom_pct:.2f}% is below the floor "
            f"{cfg.headroom_floor_pct:g}%: the reproduction would risk real exhaustion"
        )
    if ingress is not None and ingress.headroom_pct < cfg.headroom_floor_pct:
        return (
            f"ingress headroom {ingress.headroom_pct:.2f}% is below the floor "
            f"{cfg.headroom_floor_pct:g}% ({ingress.summary()}): nothing is created"
        )
    if clashes:
        return (
            f"allocator.scratch_subnet {cfg.scratch_subnet} overlaps {', '.join(clashes)}: "
            "choose a free range"
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
    ingress: HeldCount | None = None  # measured before anything was created
    probe_ids: tuple[str, ...] = ()  # every probe service created (their VIP lines are ours)


def gather(
    seams: Seams, settings: Settings, progress: Callable[[str], None] = log.info
) -> Observation:
    swarm, alloc = seams.swarm, settings.allocator
    inspect = swarm.network(settings.network)
    before = parse_network(inspect) if inspect else None
    if before is None:
        return Observation(refusal(alloc, None), None)
    ingress, ingress_probes = measure_ingress(swarm, settings)
    progress(f"ingress before the reproduction: {ingress.summary() if ingress else 'none'}")
    clashes = overlapping(alloc.scratch_subnet, swarm.all_networks())
    why = refusal(alloc, before, ingress, clashes)
    if why:
        return Observation(why, None, ingress, tuple(ingress_probes))
    result = reproduce(seams, settings, progress)
    result.ingress = ingress
    result.probe_ids[:0] = ingress_probes
    result.removals_per_day, result.rate_source = removal_rate(alloc)
    result.ingress_removals_per_day = alloc.ingress_removals_per_day
    result.engine_version = str(swarm.info().get("ServerVersion", ""))
    return Observation(None, result, ingress, tuple(result.probe_ids))


RATE_WINDOW_DAYS = 7
MAX_RUN_ENTRIES = 100_000


def removal_rate(cfg: AllocatorConfig, now: float | None = None) -> tuple[float, str]:
    """Task removals a day on the host: the harness's run folders changed in the last week
    (each run removes `tasks_per_run` tasks) when `runs_dir` is set and readable, else the
    configured figure. Entries are counted, never followed or read."""
    if cfg.runs_dir is None:
        return cfg.removals_per_day, "allocator.removals_per_day"
    why = writable_by_others(cfg.runs_dir) if os.geteuid() == 0 else None
    if why:
        # Whoever can add or remove entries there would choose the forecast.
        return cfg.removals_per_day, f"allocator.removals_per_day ({cfg.runs_dir} is {why})"
    cutoff = (now if now is not None else time.time()) - RATE_WINDOW_DAYS * 86400
    recent = 0
    try:
        with os.scandir(cfg.runs_dir) as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_RUN_ENTRIES:
                    break
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    recent += 1
    except OSError as exc:
        log.warning("runs_dir %s unreadable (%s): using removals_per_day", cfg.runs_dir, exc)
        return cfg.removals_per_day, f"allocator.removals_per_day ({cfg.runs_dir} unreadable)"
    per_day = recent * cfg.tasks_per_run / RATE_WINDOW_DAYS
    return per_day, f"{recent} runs in {cfg.runs_dir} over {RATE_WINDOW_DAYS} days"


def judge(obs: Observation, settings: Settings) -> list[Check]:
    if obs.result is None:
        why = f"refused: {obs.refused}"
        checks = [skipped(Family.ALLOC.id("stage"), Gate.M2, "the reproduction runs", why)]
        if obs.ingress is not None:
            checks.append(_ingress_check(obs.ingress, settings.allocator, 0.0))
        return checks
    return judge_allocator(obs.result, settings.allocator)


INGRESS_BATCH = 8  # probe services created at once on ingress


def _probe_labels(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_id, LABEL_ROLE: "probe"}


def measure_ingress(swarm: SwarmApi, settings: Settings) -> tuple[HeldCount | None, list[str]]:
    """Ingress as the allocator holds it: the engine's IPAM status where it reports one;
    else a fill probe bounded by what the floor needs (at most `ingress_probe_max`
    services); else the endpoint list. None: this engine has no ingress network. Also the
    probe service the allocator refused, if any (its VIP line is the probe's)."""
    inspect, facts, used = _listed(swarm, "ingress")
    if not inspect:
        return None, []
    status = ipam_status(inspect)
    alloc = settings.allocator
    listed = count_held("ingress", facts.capacity, used)
    if status is None and listed.headroom_pct < alloc.headroom_floor_pct:
        # Already below the floor by the endpoint list alone: refused without creating a thing.
        return listed, []
    if status is None and alloc.ingress_probe_max > 0:
        needed = math.ceil(facts.capacity * alloc.headroom_floor_pct / 100)
        limit = min(alloc.ingress_probe_max, max(needed, 1), max(facts.capacity - used, 0))
        suffix = settings.run_id.rsplit("-", 1)[-1]
        # In batches: a refusal here is not expected (ingress is above the floor by its lists).
        probe = fill(
            swarm,
            None,
            limit,
            _probe_labels(settings.run_id),
            alloc.image,
            f"pvc-ing-{suffix}",
            batch=INGRESS_BATCH,
        )
        return count_held("ingress", facts.capacity, used, None, probe), list(probe.created)
    return count_held("ingress", facts.capacity, used, status), []


def listed_addresses(swarm: SwarmApi, inspect: dict[str, Any], facts: NetworkFacts) -> int:
    """Addresses the engine's lists account for: the verbose inspect's endpoints, plus the
    VIP of every service on the network that runs no task there (the inspect lists only
    services with tasks), so a service scaled to 0 is not taken for a leak."""
    net_id, shown = inspect.get("Id"), set(inspect.get("Services") or {})
    taskless = sum(
        1
        for svc in swarm.services()
        if svc["Spec"]["Name"] not in shown
        and any(
            v.get("NetworkID") == net_id
            for v in (svc.get("Endpoint") or {}).get("VirtualIPs") or []
        )
    )
    return facts.used + taskless


def _listed(swarm: SwarmApi, network: str) -> tuple[dict[str, Any], NetworkFacts, int]:
    """One verbose inspect of the network: the answer, its facts, and the addresses the
    engine's lists account for."""
    inspect = swarm.network(network) or {}
    facts = parse_network(inspect)
    return inspect, facts, listed_addresses(swarm, inspect, facts) if inspect else facts.used


def _shared_count(swarm: SwarmApi, network: str) -> tuple[NetworkFacts, HeldCount]:
    inspect, facts, used = _listed(swarm, network)
    return facts, count_held(network, facts.capacity, used, ipam_status(inspect))


def reproduce(
    seams: Seams,
    settings: Settings,
    progress: Callable[[str], None] = log.info,
) -> AllocatorResult:
    """Run the configured rounds on a scratch overlay, count what the allocator still holds
    there, then remove it; everything created carries the run label."""
    alloc, net, run_id, swarm = settings.allocator, settings.network, settings.run_id, seams.swarm
    suffix = run_id.rsplit("-", 1)[-1]
    first, result_before = _shared_count(swarm, net)
    result = AllocatorResult(
        net, first.capacity, first.used, first.used, datetime.now(UTC), datetime.now(UTC)
    )
    result.removal = alloc.removal
    result.shared_before = result_before
    result.scratch = f"pvc-scratch-{suffix}"
    scratch_id = swarm.create_overlay(
        result.scratch, alloc.scratch_subnet, {LABEL_RUN: run_id, LABEL_ROLE: "scratch"}
    )
    progress(f"scratch overlay {result.scratch} ({alloc.scratch_subnet}) plays {net}'s role")
    try:
        for rnd in range(1, alloc.rounds + 1):
            result.rounds.append(_round(seams, settings, result.scratch, rnd, progress))
        result.scratch_count = _count_scratch(swarm, settings, result, scratch_id, progress)
    except BaseException:
        # Interrupted (SIGINT, SIGTERM, a cancel) or failed: the throwaways may still hold the
        # scratch network, and only teardown removes them (services first, by label). One try
        # here, never a wait for what cannot happen: an interrupted run stops in seconds.
        with contextlib.suppress(Exception):
            swarm.remove_network(scratch_id)
        raise
    result.scratch_left = not _remove_network(swarm, scratch_id, alloc.settle_timeout_s)
    after, result.shared_after = _shared_count(swarm, net)
    result.used_after = after.used
    result.finished_at = datetime.now(UTC)
    return result


def _round(
    seams: Seams,
    settings: Settings,
    scratch: str,
    rnd: int,
    progress: Callable[[str], None],
) -> RoundFigures:
    alloc, run_id, swarm = settings.allocator, settings.run_id, seams.swarm
    suffix = run_id.rsplit("-", 1)[-1]
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "throwaway"}
    t0 = time.monotonic()
    baseline = parse_network(swarm.network(scratch) or {})
    names = [f"pvc-alloc-{suffix}-r{rnd}-{i}" for i in range(1, alloc.batch + 1)]
    progress(
        f"round {rnd}: deploying {len(names)} throwaway stacks on {scratch} "
        f"({alloc.concurrency} at a time); baseline {baseline.used} endpoints"
    )
    composes = [
        (
            n,
            throwaway_compose(
                n,
                alloc.image,
                scratch,
                labels,
                publish=alloc.publish_ports,
                grace_s=alloc.stop_grace_s,
            ),
        )
        for n in names
    ]
    failed = _deploy_all(seams, composes, alloc.concurrency)
    if failed:
        # An engine back from a restart may not list the scratch network for a moment (the
        # CLI then says it "could not be found"): once it is there again, those go once more.
        _wait_for_network(swarm, scratch, alloc.settle_timeout_s)
        failed = _deploy_all(seams, [c for c in composes if c[0] in failed], alloc.concurrency)
    allocated = not failed and _wait_allocated(swarm, run_id, len(names), alloc.settle_timeout_s)
    peak = parse_network(swarm.network(scratch) or {})
    progress(
        f"round {rnd}: peak {peak.used} endpoints ({peak.vips} VIPs, "
        f"{peak.task_ips} task IPs); all allocated: {allocated}"
    )
    if alloc.removal == "services-first":
        slow = remove_services_gently(swarm, swarm.services(labels), alloc.settle_timeout_s)
        if slow:
            progress(f"round {rnd}: tasks of {', '.join(slow)} still there at the deadline")
    # The incident's pattern: every stack removed at once, racing the allocator.
    with ThreadPoolExecutor(max_workers=alloc.concurrency) as pool:
        complaints = dict(zip(names, pool.map(lambda n: _stack_rm(seams, n), names), strict=True))
    rm_errors = [f"deploy: {e}" for e in failed.values()] + [e for e in complaints.values() if e]
    progress(
        f"round {rnd}: docker stack rm of {len(names)} stacks concurrently "
        f"({len(rm_errors)} complained; {alloc.removal}); waiting for the allocator"
    )
    prefix = f"pvc-alloc-{suffix}-r{rnd}-"
    after, settled = settle_network(
        swarm, scratch, released(baseline, prefix), timeout_s=alloc.settle_timeout_s
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
    progress(
        f"round {rnd}: endpoints listed after {after.used if after else '?'}; "
        f"endpoint delta {figures.leaked_total} (raw change {figures.leaked}, "
        f"other services {figures.others:+d})"
    )
    return figures


def _count_scratch(
    swarm: SwarmApi,
    settings: Settings,
    result: AllocatorResult,
    scratch_id: str,
    progress: Callable[[str], None],
) -> HeldCount | None:
    """What the allocator still holds on the scratch network now that every throwaway is
    gone: its IPAM status, else a fill up to what the endpoint list leaves free."""
    inspect = swarm.network(result.scratch) or {}
    facts = parse_network(inspect)
    status = ipam_status(inspect)
    if status is None and not settings.allocator.capacity_probe:
        return None
    probe = None
    if status is None:
        suffix = settings.run_id.rsplit("-", 1)[-1]
        limit = max(facts.capacity - facts.used, 0)
        probe = fill(
            swarm,
            scratch_id,
            limit,
            _probe_labels(settings.run_id),
            settings.allocator.image,
            f"pvc-probe-{suffix}",
        )
        result.probe_ids.extend(probe.created)
        result.probe_s += probe.seconds
    held = count_held(result.scratch, facts.capacity, facts.used, status, probe)
    progress(f"allocator count after {result.removed_tasks} removed tasks: {held.summary()}")
    return held


def _remove_network(swarm: SwarmApi, network_id: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not swarm.remove_network(network_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _deploy_all(seams: Seams, composes: list[tuple[str, str]], concurrency: int) -> dict[str, str]:
    """`docker stack deploy` of each (stack, compose), `concurrency` at a time; what the CLI
    refused, by stack (a refusal is the round's finding, not the run's end)."""

    def one(item: tuple[str, str]) -> str | None:
        try:
            seams.stacks.stack_deploy(item[0], item[1], {}, "throwaway")
        except StackError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        said = dict(zip((n for n, _ in composes), pool.map(one, composes), strict=True))
    return {n: e for n, e in said.items() if e}


def _wait_for_network(swarm: SwarmApi, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while swarm.network(name) is None and time.monotonic() < deadline:
        time.sleep(POLL_S)


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


@dataclass(frozen=True)
class Forecast:
    """Days until a network runs out at the measured leak and the host's removal rate."""

    network: str
    free: int
    free_exact: bool
    leak_per_day: float | None  # None: the leak was not counted

    @property
    def days(self) -> float | None:
        """None: never at this rate (no leak), or not known (no count)."""
        if not self.leak_per_day or self.leak_per_day <= 0:
            return None
        return self.free / self.leak_per_day

    def text(self) -> str:
        if self.leak_per_day is None:
            return f"{self.network}: not forecast (the leak was not counted)"
        if self.days is None:
            return f"{self.network}: never at this rate ({self.free} free, no leak per day)"
        bound = "" if self.free_exact else "at least "
        return (
            f"{self.network}: {self.days:.0f} days ({bound}{self.free} free, "
            f"{self.leak_per_day:.2f} leaked a day)"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"days": None if self.days is None else round(self.days, 1)}


def forecasts(result: AllocatorResult) -> list[Forecast]:
    """Pure: the shared network and ingress, at the leak per removed task measured on the
    scratch network times each network's removals a day (ingress: published-port tasks)."""
    per_removal = result.leak_per_removal
    shared = result.shared_after
    out = [
        Forecast(
            result.network,
            shared.free if shared else result.capacity - result.used_after,
            shared.exact if shared else True,
            None if per_removal is None else per_removal * result.removals_per_day,
        )
    ]
    if result.ingress is not None:
        out.append(
            Forecast(
                "ingress",
                result.ingress.free,
                result.ingress.exact,
                None if per_removal is None else per_removal * result.ingress_removals_per_day,
            )
        )
    return out


def _ingress_check(ingress: HeldCount, cfg: AllocatorConfig, seconds: float) -> Check:
    ok = ingress.headroom_pct >= cfg.headroom_floor_pct
    return Check(
        Family.ALLOC.id("ingress"),
        Gate.M2,
        Status.PASS if ok else Status.FAIL,
        f"ingress headroom >= {cfg.headroom_floor_pct:g}%",
        f"{ingress.headroom_pct:.2f}%: {ingress.summary()}",
        ""
        if ok
        else "published-port services take ingress addresses, which leak like the shared "
        "network's: a nearly exhausted ingress refuses the next published port",
        seconds,
    )


# The public record of this leak's fixes, as of pvcheck's last review of it (2026-12): none
# has shipped in a release, so none is assumed on any engine version. A version named here
# would be the first release that carries the fix.
KNOWN_FIXES: tuple[tuple[str, str, str | None], ...] = (
    ("moby/moby#53563", "the manager releases task addresses after a network is removed", None),
    ("docker/cli#7304", "`docker stack rm --detach=false` waits for tasks before networks", None),
)
MITIGATION = (
    "remove stacks services first: `docker service rm` the stack's services, wait until "
    "`docker service ps` lists none of their tasks, then `docker stack rm`; a manager "
    "restart hands leaked addresses back (moby/moby#37338)"
)


def engine_advice(engine_version: str, leaked: int | None) -> str:
    """Pure: the engine against the known fixes, and what the operator can do now."""
    shipped = [f"{ref} ({what})" for ref, what, version in KNOWN_FIXES if version]
    missing = [ref for ref, _what, version in KNOWN_FIXES if not version]
    head = f"engine {engine_version or 'unknown'}: "
    head += f"fixes shipped: {', '.join(shipped)}; " if shipped else ""
    head += f"not in any release yet: {', '.join(missing)}"
    if leaked:
        return f"{head}. Mitigation now: {MITIGATION}"
    return head


def engine_leak_text(result: AllocatorResult) -> str:
    """What the reproduction found about the engine, in words for STATUS and the CLI."""
    endpoint_delta = sum(r.leaked_total for r in result.rounds)
    count = result.scratch_count
    if count is None or result.engine_leaked is None:
        return (
            f"the allocator's count was not taken (no IPAM status, capacity probe off); "
            f"endpoint delta {endpoint_delta}, which cannot see this leak"
        )
    per = result.leak_per_removal or 0.0
    verdict = "leaks" if result.engine_leaked else "does not leak"
    return (
        f"the engine {verdict} under the incident's pattern ({result.removal} removal): "
        f"{result.engine_leaked} address(es) held after {result.removed_tasks} removed "
        f"task(s), {per:.2f} per removal ({count.method}); endpoint delta {endpoint_delta}"
    )


def judge_allocator(result: AllocatorResult, cfg: AllocatorConfig) -> list[Check]:
    """Pure: allocation, what the run left on the real networks, the stacks' networks,
    headroom of the shared network and ingress, and the forecast."""
    rounds = result.rounds
    stuck = [r.round for r in rounds if not r.allocated]
    stacks_left = [n for r in rounds for n in r.networks_left]
    if result.scratch_left:
        stacks_left.append(result.scratch)
    orphaned = [n for r in rounds for n in r.networks_orphaned]
    tolerance = cfg.leak_tolerance * len(rounds)
    before, after = result.shared_before, result.shared_after
    # What the run left on the shared network: the allocator's count where the engine gives
    # one (less what other services' endpoints explain), else nothing (rounds never join it).
    left_shared = 0
    if before is not None and after is not None and before.method == "ipam-status":
        left_shared = max(0, (after.held - before.held) - (after.endpoints - before.endpoints))
    seconds = (result.finished_at - result.started_at).total_seconds()
    horizon = [f for f in forecasts(result) if f.days is not None and f.days < cfg.horizon_days]
    headroom = after.headroom_pct if after else result.headroom_after_pct
    checks = [
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
            Status.PASS if left_shared <= tolerance else Status.FAIL,
            f"the run leaves {result.network} as it found it (<= {cfg.leak_tolerance} "
            "per round); the race runs on a scratch network",
            f"{result.network}: {left_shared} address(es) left by the run; "
            + engine_leak_text(result),
            f"scratch {result.scratch}: "
            + (result.scratch_count.summary() if result.scratch_count else "not counted")
            + "; "
            + engine_advice(result.engine_version, result.engine_leaked),
            seconds,
        ),
        Check(
            Family.ALLOC.id("networks"),
            Gate.M2,
            Status.FAIL if stacks_left else Status.PASS,
            "every throwaway stack's own network and the scratch network are released",
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
            Status.PASS if headroom >= cfg.headroom_floor_pct else Status.FAIL,
            f"headroom after >= {cfg.headroom_floor_pct:g}%",
            f"{result.headroom_before_pct:.3f}% before, {headroom:.3f}% after "
            + (
                f"({after.summary()})" if after else f"({result.used_after}/{result.capacity} used)"
            ),
            "",
            seconds,
        ),
        Check(
            Family.ALLOC.id("forecast"),
            Gate.M2,
            Status.FAIL if horizon else Status.PASS,
            f"no network runs out within {cfg.horizon_days:g} days at the measured leak",
            "; ".join(f.text() for f in forecasts(result)),
            f"{result.removals_per_day:g} task removals a day ({result.rate_source}); "
            f"ingress {result.ingress_removals_per_day:g} published-port removals a day",
            seconds,
        ),
    ]
    if result.ingress is not None:
        checks.append(_ingress_check(result.ingress, cfg, seconds))
    return checks
