"""Adopting a finished harness run as the deploy proof (`pvcheck run --adopt RUN`): pvcheck
starts no deploy. What cc-ci's team did for this phase's M2 on a busy host: it took hedgedoc's
run 608, which ran after `proxy` was rebuilt (lab/cc-ci-twin/FACTS.md).

A run counts when it started after the fix, passed every required tier, reported a clean
teardown, and its stacks are gone from the host now. A results.json of cc-ci's schema 2 names
no stack or domain, so "its stacks are gone" is asked of every stack the harness pattern admits
that begins as the recipe's runs do: a live run of the same recipe refuses the adoption (try
again once it is gone), never lets it pass on a guess. Gather (the results file and the host,
through the seams) is apart from judge (pure).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pvcheck.config import AdoptConfig, Config, DeployConfig
from pvcheck.deploy import harness_checks
from pvcheck.deploy.drone import DroneClient, DroneError, drone_token
from pvcheck.errors import ConfigError, PvcheckError
from pvcheck.harnessresults import (
    ResultsError,
    decode_results,
    fetch_results_bytes,
    parse_results,
    results_stack,
    results_where,
)
from pvcheck.procs import printable
from pvcheck.records import Check, Family, Gate, Status, docker_time, format_ts
from pvcheck.seams import AdoptedRun, DeployOutcome, Seams
from pvcheck.stacks import stack_objects

DRIVER = "adopt"
SKEW_S = 120.0  # clocks of Drone, the harness and this machine may differ by this much
_RECIPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a recipe's name, as docker's


@dataclass(frozen=True)
class Settings:
    run: str
    adopt: AdoptConfig
    deploy: DeployConfig
    network: str

    @classmethod
    def from_config(cls, cfg: Config, run: str, field: str = "--adopt") -> Settings:
        """Refused (exit 2) when the config has nowhere to read a run from."""
        if cfg.deploy is None or cfg.deploy.adopt is None:
            raise ConfigError(
                str(cfg.source),
                "deploy.adopt",
                f"{field} needs a [deploy.adopt] section: where a harness run's results are",
            )
        return cls(run, cfg.deploy.adopt, cfg.deploy, cfg.network.name)

    @property
    def results_path(self) -> Path:
        return self.adopt.results_of(self.run)

    @property
    def link(self) -> str:
        return self.adopt.link_of(self.run)


@dataclass(frozen=True)
class DroneBuild:
    """What Drone says of the run's build, as it said it (times in epoch seconds)."""

    number: int
    status: str = ""
    started: Any = None
    finished: Any = None
    error: str = ""  # Drone could not be asked


@dataclass(frozen=True)
class Found:
    """What the host and Drone say of the run now."""

    data: bytes | None  # the run's results.json as read; None when it could not be
    error: str  # why it could not be read
    where: str  # how it was read (the host command)
    build: DroneBuild | None  # None: no build to ask (no deploy.drone, or a manual run's name)
    network_created: datetime | None  # the fixed network's creation, from the engine
    stacks: dict[str, list[str]]  # every stack on the host now -> its objects
    now: datetime
    seconds: float


def gather(seams: Seams, settings: Settings, drone: DroneClient | None = None) -> Found:
    """Read only: the results file, the build, the network's age and the stacks."""
    t0 = time.monotonic()
    path = settings.results_path
    where = results_where(seams.host, path)
    data: bytes | None = None
    error = ""
    try:
        data = fetch_results_bytes(seams.host, path)
    except ResultsError as exc:
        error = str(exc)
    except (PvcheckError, OSError, subprocess.SubprocessError) as exc:
        error = f"{where}: the host did not answer ({type(exc).__name__}: {exc})"
    build = _drone_build(settings, drone)
    inspect = seams.swarm.network(settings.network)
    created = docker_time(str(inspect.get("Created", ""))) if inspect else None
    stacks = stack_objects(seams.swarm)
    now = datetime.now(UTC)
    return Found(data, error, where, build, created, stacks, now, time.monotonic() - t0)


def drone_client(cfg: Config, run: str) -> DroneClient | None:
    """A client for the run's Drone build, when Drone is configured and the run is a build
    number (a manual run's name has no build). Its token must be set (ConfigError)."""
    drone = cfg.deploy.drone if cfg.deploy is not None else None
    if drone is None or not run.isdigit():
        return None
    return DroneClient(drone, drone_token(drone, str(cfg.source)))


def _drone_build(settings: Settings, drone: DroneClient | None) -> DroneBuild | None:
    if drone is None:
        return None
    number = int(settings.run)
    try:
        build = drone.get(number)
    except (DroneError, httpx.HTTPError) as exc:
        return DroneBuild(number, error=f"{type(exc).__name__}: {exc}")
    return DroneBuild(
        number,
        printable(str(build.get("status")))[:40],
        build.get("started"),
        build.get("finished"),
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- judge (pure) ---------------------------------------------------------------------------
def run_stacks(settings: Settings, recipe: str, stacks: dict[str, list[str]]) -> list[str]:
    """The stacks on the host now that could be this recipe's harness runs."""
    deploy = settings.deploy
    if deploy.stack and recipe == deploy.recipe:  # the fixed stack is the enrolled recipe's
        return [deploy.stack] if deploy.stack in stacks else []
    if not deploy.stack_pattern:  # a harness that names the stack after the recipe
        return [recipe] if recipe in stacks else []
    n = settings.adopt.stack_prefix_chars
    begins = recipe[:n] if n else ""
    return sorted(s for s in stacks if re.search(deploy.stack_pattern, s) and s.startswith(begins))


def judge(found: Found, settings: Settings) -> tuple[list[Check], AdoptedRun]:
    doc: dict[str, Any] = {}
    problem = found.error
    if found.data is not None:
        try:
            decoded = decode_results(found.data, found.where)
            doc = decoded if isinstance(decoded, dict) else {}
        except ResultsError as exc:
            problem = str(exc)
    named = doc.get("recipe")
    recipe = named if isinstance(named, str) and _RECIPE.fullmatch(named) else ""
    finished = _epoch(doc.get("finished"))
    adopted = AdoptedRun(
        settings.run,
        recipe,
        format_ts(_utc(finished)) if finished is not None else "",
        found.where,
        settings.link,
        hashlib.sha256(found.data).hexdigest() if found.data is not None else "",
    )
    if not doc:
        why = problem or f"{found.where}: not a JSON object"
        return [_adoption(settings, why, found.seconds)], adopted
    admitted = _admitted(found, settings, doc, finished, recipe)
    if admitted.status != Status.PASS:
        return [admitted], adopted
    outcome = DeployOutcome(DRIVER, recipe, f"run {settings.run}'s stack")
    try:
        outcome.take(parse_results(doc))
    except ResultsError as exc:
        return [_adoption(settings, f"{found.where}: {exc}", found.seconds)], adopted
    checks = [admitted, *harness_checks(outcome, list(settings.deploy.tiers))]
    gone = _gone(found, settings, recipe, outcome.clean_teardown_reported, results_stack(doc))
    return [*checks, gone], adopted


def _epoch(value: Any) -> float | None:
    """Epoch seconds as results.json or Drone give them; anything else (a bool, a string,
    NaN, infinity, zero) is none."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    # Compared before any conversion: NaN and infinity fail it, and a 400-digit integer
    # never reaches float() (which would overflow).
    return float(value) if number and 0 < value < 1e11 else None


def _adoption(
    settings: Settings, why: str, seconds: float, found: str = "refused", ok: bool = False
) -> Check:
    """The adoption's check: refused (FAIL) unless `ok`."""
    return Check(
        Family.DEPLOY.id("adopted"),
        Gate.M2,
        Status.PASS if ok else Status.FAIL,
        f"harness run {settings.run} finished, and started after the fix",
        found,
        why,
        seconds,
    )


def _admitted(
    found: Found, settings: Settings, doc: dict[str, Any], finished: float | None, recipe: str
) -> Check:
    """The run is the one asked for, of a recipe that may stand for the proof, it finished
    (not in the future), and it cannot have started before the fix."""
    run, where, secs = settings.run, found.where, found.seconds
    if str(doc.get("run_id")) != run:
        named = printable(str(doc.get("run_id")))[:70]
        return _adoption(settings, f"{where} names run {named}, not {run}", secs)
    if finished is None:
        return _adoption(settings, f"{where} gives no finished time", secs)
    if finished > found.now.timestamp() + SKEW_S:
        return _adoption(settings, f"{where} says it finished {format_ts(_utc(finished))}, "
                        f"later than now ({format_ts(found.now)})", secs)  # fmt: skip
    if not recipe:
        return _adoption(settings, f"{where} names no recipe", secs)
    allowed = settings.adopt.recipes or [settings.deploy.recipe]
    if recipe not in allowed:
        return _adoption(settings, f"recipe {recipe} is not one deploy.adopt.recipes lets stand "
                        f"for the proof ({', '.join(allowed)})", secs)  # fmt: skip
    fixed, fixed_how = _fix_time(found, settings)
    if fixed is None:
        return _adoption(settings, fixed_how, secs)
    start, start_how = _start(found, settings, finished)
    if start is None:
        return _adoption(settings, start_how, secs)
    found_text = f"run {run} (recipe {recipe}) finished {format_ts(_utc(finished))}"
    if start < fixed:
        why = f"refused: it may have started before the fix ({fixed_how}); {start_how}"
        return _adoption(settings, why, secs, found_text)
    link = f"; results {settings.link}" if settings.link else ""
    why = (
        f"adopted, no deploy started: {start_how}, after the fix ({fixed_how}){link}; "
        "its attachment to the network was not watched"
    )
    return _adoption(settings, why, secs, found_text, ok=True)


def _start(found: Found, settings: Settings, finished: float) -> tuple[datetime | None, str]:
    """When the run started at the earliest: its Drone build's start, which must bracket
    the results with the build's end; without a build, its finish less max_run_s."""
    build = found.build
    if build is None:
        limit = settings.adopt.max_run_s
        start = _utc(finished - limit)
        return start, (
            f"started at the earliest {format_ts(start)}: it finished then, less the longest a "
            f"run lasts (deploy.adopt.max_run_s {limit:g}); no Drone build to ask"
        )
    n = build.number
    if build.error:
        return None, f"Drone could not be asked for build {n}: {build.error}"
    if build.status != "success":
        # A build that failed with every tier passing failed somewhere else (as the Drone
        # driver reads it); one still going is not a finished run.
        return None, f"Drone build {n} is {build.status or 'of no status'}, not a success"
    started, ended = _epoch(build.started), _epoch(build.finished)
    if started is None or ended is None:
        return None, f"Drone build {n} gives no start or end time"
    if not started - SKEW_S <= finished <= ended + SKEW_S:
        return None, (
            f"Drone build {n} ran {format_ts(_utc(started))} to {format_ts(_utc(ended))}, and "
            "its results say they were written "
            f"{format_ts(_utc(finished))}: not this build's"
        )
    return _utc(started), f"Drone build {n} started {format_ts(_utc(started))}"


def _fix_time(found: Found, settings: Settings) -> tuple[datetime | None, str]:
    configured = settings.adopt.fixed_at
    created = found.network_created
    # The later of the two: a network recreated after the configured instant is the fix.
    if configured is not None and (created is None or configured >= created):
        fixed = configured.astimezone(UTC)
        return fixed, f"deploy.adopt.fixed_at {format_ts(fixed)}"
    if created is not None:
        return created, f"network {settings.network} created {format_ts(created)}"
    return None, (
        f"no fix time: network {settings.network} not found and deploy.adopt.fixed_at unset"
    )


def _gone(
    found: Found, settings: Settings, recipe: str, reported: bool | None, named: str | None
) -> Check:
    """The run's own word that it tore down, and no stack of its recipe's runs on the host
    (nor the stack its results name, when they name one)."""
    stacks = run_stacks(settings, recipe, found.stacks)
    if named and named in found.stacks and named not in stacks:
        stacks.append(named)
    objects = [name for s in stacks for name in found.stacks[s]]
    ok = reported is True and not stacks
    found_text = f"{len(objects)} objects left"
    if objects:
        found_text += f" ({', '.join(objects[:20])})"
    why = [] if reported is True else [f"the harness reported clean_teardown={reported}"]
    if stacks:
        why.append(f"stacks of {recipe}'s runs on the host now: {', '.join(stacks)}")
    return Check(
        Family.DEPLOY.id("teardown"),
        Gate.M2,
        Status.PASS if ok else Status.FAIL,
        f"the run reported a clean teardown; no stack of {recipe}'s runs remains",
        found_text,
        "; ".join(why) or "the harness reported clean_teardown=True",
        found.seconds,
    )
