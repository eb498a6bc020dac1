"""Adopting a finished harness run as the deploy proof (`pvcheck run --adopt RUN`): pvcheck
starts no deploy. What cc-ci's team did for this phase's M2 on a busy host: it took hedgedoc's
run 608, which ran after `proxy` was rebuilt (lab/cc-ci-twin/FACTS.md).

A run counts when it started after the fix, passed every required tier, reported a clean
teardown, and its stacks are gone from the host now. A results.json of cc-ci's schema 2 names
no stack or domain, so "its stacks are gone" is asked of every stack the harness pattern admits
that begins as the recipe's runs do: a live run of the same recipe makes the adoption wait for
another try, never pass on a guess. Gather (the results file and the host, through the seams)
is apart from judge (pure).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pvcheck.config import AdoptConfig, Config, DeployConfig
from pvcheck.deploy import harness_checks
from pvcheck.deploy.drone import FINISHED, DroneClient, DroneError, drone_token
from pvcheck.errors import ConfigError
from pvcheck.harnessresults import ResultsError, fetch_results, parse_results
from pvcheck.procs import printable
from pvcheck.records import Check, Family, Gate, Status, docker_time, format_ts
from pvcheck.seams import AdoptedRun, DeployOutcome, Seams
from pvcheck.stacks import stack_objects

DRIVER = "adopt"
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
        return Path(self.adopt.results_path.replace("{run}", self.run))

    @property
    def link(self) -> str:
        url = self.adopt.results_url
        return url.replace("{run}", self.run) if url else ""


@dataclass(frozen=True)
class Found:
    """What the host and Drone say of the run now."""

    doc: Any  # the run's results.json; None when it could not be read
    error: str  # why it could not be read
    where: str  # how it was read (the host command)
    started: float | None  # the Drone build's start (epoch s), when Drone was asked
    started_how: str
    network_created: datetime | None  # the fixed network's creation, from the engine
    stacks: dict[str, list[str]]  # every stack on the host now -> its objects
    seconds: float


def gather(seams: Seams, settings: Settings, drone: DroneClient | None = None) -> Found:
    """Read only: the results file, the build's start, the network's age and the stacks."""
    t0 = time.monotonic()
    path = settings.results_path
    where = seams.host.how(f"cat {path}")
    doc: Any = None
    error = ""
    try:
        doc = fetch_results(seams.host, path)
    except ResultsError as exc:
        error = str(exc)
    started, started_how = _drone_start(settings, drone)
    inspect = seams.swarm.network(settings.network)
    created = docker_time(str(inspect.get("Created", ""))) if inspect else None
    stacks = stack_objects(seams.swarm)
    return Found(doc, error, where, started, started_how, created, stacks, time.monotonic() - t0)


def drone_client(cfg: Config, run: str) -> DroneClient | None:
    """A client for the run's Drone build, when Drone is configured and the run is a build
    number (a manual run's name has no build)."""
    drone = cfg.deploy.drone if cfg.deploy is not None else None
    if drone is None or not run.isdigit():
        return None
    return DroneClient(drone, drone_token(drone, str(cfg.source)))


def _drone_start(settings: Settings, drone: DroneClient | None) -> tuple[float | None, str]:
    if drone is None:
        return None, "no Drone build asked (no deploy.drone, or the run is not a build number)"
    number = int(settings.run)
    try:
        build = drone.get(number)
    except (DroneError, httpx.HTTPError) as exc:
        return None, f"Drone not asked for build {number}: {type(exc).__name__}: {exc}"
    status, started = build.get("status"), build.get("started")
    if status not in FINISHED:
        return None, f"Drone build {number} is {printable(str(status))}, not finished"
    if not isinstance(started, int | float) or isinstance(started, bool) or started <= 0:
        return None, f"Drone build {number} gives no start time"
    return float(started), f"Drone build {number} started {format_ts(_utc(started))}"


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- judge (pure) ---------------------------------------------------------------------------
def run_stacks(settings: Settings, recipe: str, stacks: dict[str, list[str]]) -> list[str]:
    """The stacks on the host now that could be this recipe's harness runs."""
    deploy = settings.deploy
    if deploy.stack:
        return [deploy.stack] if deploy.stack in stacks else []
    if not deploy.stack_pattern:
        return [recipe] if recipe in stacks else []
    n = settings.adopt.stack_prefix_chars
    begins = recipe[:n] if n else ""
    return sorted(s for s in stacks if re.search(deploy.stack_pattern, s) and s.startswith(begins))


def judge(found: Found, settings: Settings) -> tuple[list[Check], AdoptedRun]:
    doc = found.doc if isinstance(found.doc, dict) else {}
    named = doc.get("recipe")
    recipe = named if isinstance(named, str) and _RECIPE.match(named) else ""
    finished = _epoch(doc.get("finished"))
    finished_at = _utc(finished) if finished is not None else None
    adopted = AdoptedRun(
        settings.run,
        recipe,
        format_ts(finished_at) if finished_at else "",
        found.where,
        settings.link,
    )
    admitted = _admitted(found, settings, doc, finished_at, recipe)
    if found.doc is None or admitted.status != Status.PASS:
        return [admitted], adopted
    outcome = DeployOutcome(DRIVER, recipe, f"run {settings.run}'s stack")
    try:
        outcome.take(parse_results(doc))
    except ResultsError as exc:
        return [_refused(settings, f"{found.where}: {exc}", found.seconds)], adopted
    checks = [admitted, *harness_checks(outcome, list(settings.deploy.tiers))]
    return [*checks, _gone(found, settings, recipe, outcome.clean_teardown_reported)], adopted


def _epoch(value: Any) -> float | None:
    """Epoch seconds as results.json gives them; anything else (a bool, a string) is none."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e11
    return float(value) if ok else None


def _refused(settings: Settings, why: str, seconds: float) -> Check:
    return Check(
        Family.DEPLOY.id("adopted"),
        Gate.M2,
        Status.FAIL,
        f"harness run {settings.run} finished, and started after the fix",
        "refused",
        why,
        seconds,
    )


def _admitted(
    found: Found, settings: Settings, doc: dict[str, Any], finished: datetime | None, recipe: str
) -> Check:
    """The run is the one asked for, it finished, and it cannot have started before the fix."""
    run = settings.run
    if found.doc is None:
        return _refused(settings, found.error, found.seconds)
    if str(doc.get("run_id")) != run:
        named = printable(str(doc.get("run_id")))[:70]
        return _refused(settings, f"{found.where} names run {named}, not {run}", found.seconds)
    if finished is None:
        return _refused(settings, f"{found.where} gives no finished time", found.seconds)
    if not recipe:
        return _refused(settings, f"{found.where} names no recipe", found.seconds)
    fixed, fixed_how = _fix_time(found, settings)
    if fixed is None:
        return _refused(settings, fixed_how, found.seconds)
    if found.started is not None:
        start, start_how = _utc(found.started), found.started_how
    else:
        limit = settings.adopt.max_run_s
        start = _utc(finished.timestamp() - limit)
        start_how = (
            f"started at the earliest {format_ts(start)}: it finished then, less the longest a "
            f"run lasts (deploy.adopt.max_run_s {limit:g}); {found.started_how}"
        )
    found_text = f"run {run} (recipe {recipe}) finished {format_ts(finished)}"
    if start < fixed:
        return Check(
            Family.DEPLOY.id("adopted"),
            Gate.M2,
            Status.FAIL,
            f"harness run {run} finished, and started after the fix",
            found_text,
            f"refused: it may have started before the fix ({fixed_how}); {start_how}",
            found.seconds,
        )
    link = f"; results {settings.link}" if settings.link else ""
    return Check(
        Family.DEPLOY.id("adopted"),
        Gate.M2,
        Status.PASS,
        f"harness run {run} finished, and started after the fix",
        found_text,
        f"adopted, no deploy started: {start_how}, after the fix ({fixed_how}){link}; "
        "its attachment to the network was not watched",
        found.seconds,
    )


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


def _gone(found: Found, settings: Settings, recipe: str, reported: bool | None) -> Check:
    """The run's own word that it tore down, and no stack of its recipe's runs on the host."""
    stacks = run_stacks(settings, recipe, found.stacks)
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
