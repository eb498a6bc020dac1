"""Stage deploy (M2): one enrolled recipe deploys through the overlay, passes its tiers and
tears down cleanly, and nothing else runs beside it. Drivers (compose, a harness command,
Drone) gather what happened through one interface; `judge` turns it into checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pvcheck.config import Config, DeployConfig
from pvcheck.deploy.active import wait_until_idle
from pvcheck.hostfacts import Attribution, NetworkFacts, attribute, parse_network, settle_network
from pvcheck.records import Check, Family, Gate, Status, skipped
from pvcheck.seams import DeployOutcome, Seams, TierStatus
from pvcheck.stacks import list_residue, residue_names
from pvcheck.swarm import LABEL_STACK


def judge_outcome(outcome: DeployOutcome, expected_tiers: list[str], network: str) -> list[Check]:
    """Pure: one check for the attachment, one per expected tier, one for a driver error."""
    checks = []
    if outcome.error:
        checks.append(
            Check(
                Family.DEPLOY.id("driver"),
                Gate.M2,
                Status.ERROR,
                f"{outcome.driver} driver completes",
                outcome.error,
                f"recipe {outcome.recipe}",
            )
        )
    checks.append(
        Check(
            Family.DEPLOY.id("attached"),
            Gate.M2,
            Status.PASS if outcome.attached else Status.FAIL,
            f"a service of {outcome.stack} seen attached to {network} during the run",
            outcome.attach_detail or ("attached" if outcome.attached else "never seen attached"),
        )
    )
    return checks + harness_checks(outcome, expected_tiers)


def harness_checks(outcome: DeployOutcome, expected_tiers: list[str]) -> list[Check]:
    """Pure: what the harness reported of its run: its leak scan, and each expected tier."""
    checks = []
    if outcome.no_secret_leak_reported is not None:
        # The harness scans its own artifacts for the run's secrets (cc-ci's no_secret_leak).
        leak_free = outcome.no_secret_leak_reported
        checks.append(
            Check(
                Family.DEPLOY.id("no-secret-leak"),
                Gate.M2,
                Status.PASS if leak_free else Status.FAIL,
                "the harness found none of the run's secrets in its artifacts",
                "none found" if leak_free else "a secret found",
                "" if leak_free else "results.json flags.no_secret_leak is false",
            )
        )
    by_tier = {t.tier: t for t in outcome.tiers}
    for tier in expected_tiers:
        result = by_tier.get(tier)
        if result is None:
            missing = f"the {outcome.driver} driver reported no {tier} tier"
            checks.append(
                Check(
                    Family.DEPLOY.id(f"tier.{tier}"),
                    Gate.M2,
                    Status.FAIL,
                    "pass",
                    "not reported",
                    missing,
                )
            )
            continue
        detail = result.detail
        if result.not_applicable:
            detail = f"not applicable: {result.detail}"
        checks.append(
            Check(
                Family.DEPLOY.id(f"tier.{tier}"),
                Gate.M2,
                TierStatus(result.status).status,
                "pass",
                str(result.status),
                detail,
                not_applicable=result.not_applicable,
            )
        )
    return checks


# --- the stage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    deploy: DeployConfig
    network: str
    control_plane: list[str]
    settle_timeout_s: float  # how long released endpoints may take to go

    @classmethod
    def from_config(cls, cfg: Config) -> Settings | None:
        if cfg.deploy is None:
            return None
        return cls(
            cfg.deploy,
            cfg.network.name,
            list(cfg.services.control_plane),
            cfg.allocator.settle_timeout_s,
        )


def not_configured() -> Check:
    return skipped(
        Family.DEPLOY.id("stage"),
        Gate.M2,
        "deploy proof runs",
        "skipped: no [deploy] section in the config",
    )


@dataclass(frozen=True)
class Quiet:
    """Other recipe runs, harness stacks, Drone builds or sweeps still active after waiting."""

    active: list[str]
    seconds: float


def gather_quiet(
    seams: Seams, settings: Settings, on_wait: Callable[[list[str]], None] | None = None
) -> Quiet:
    """Wait (at most active_runs.wait_s) until nothing else is active."""
    t0 = time.monotonic()
    driver = seams.driver
    active = wait_until_idle(
        settings.deploy.active_runs,
        seams.swarm,
        extra=driver.busy if driver is not None else None,
        host=seams.host,
        stack_pattern=settings.deploy.stack_pattern,
        control_plane=settings.control_plane,
        on_wait=on_wait,
    )
    return Quiet(active, time.monotonic() - t0)


def judge_quiet(quiet: Quiet) -> Check:
    """Still busy: a skip, and the run creates nothing (its verdict is INCOMPLETE)."""
    expected = "no other recipe run, Drone build or sweep in progress"
    check_id = Family.DEPLOY.id("active")
    if quiet.active:
        reason = "another run or sweep is active (" + "; ".join(quiet.active[:5]) + ")"
        return Check(check_id, Gate.M2, Status.SKIP, expected, "busy", reason, quiet.seconds)
    return Check(check_id, Gate.M2, Status.PASS, expected, "none active", "", quiet.seconds)


@dataclass(frozen=True)
class Observation:
    outcome: DeployOutcome
    baseline: NetworkFacts | None  # the network before the deploy
    after: NetworkFacts | None  # after the app was removed and the allocator settled
    left: dict[str, list[str]]  # objects of the app's stacks still there, by kind
    deploy_s: float
    teardown_s: float

    @property
    def share(self) -> Attribution | None:
        """Whose endpoints moved between the baseline and after."""
        if self.baseline is None or self.after is None:
            return None
        return attribute(self.baseline, self.after, tuple(f"{s}_" for s in self.outcome.stacks))


def gather(seams: Seams, settings: Settings) -> Observation:
    """Drive the deploy, then check the teardown of the stacks the app really used (whatever
    the driver said): no object of them left, and their endpoints released."""
    assert seams.driver is not None, "a deploy section makes a driver"
    net = settings.network
    inspect = seams.swarm.network(net)
    baseline = parse_network(inspect) if inspect else None
    t0 = time.monotonic()
    outcome = seams.driver.run()
    t1 = time.monotonic()
    if not outcome.stacks:
        return Observation(outcome, baseline, None, {}, t1 - t0, 0.0)
    prefixes = tuple(f"{s}_" for s in outcome.stacks)
    after, _ = settle_network(
        seams.swarm,
        net,
        lambda f: baseline is None or attribute(baseline, f, prefixes).leaked == 0,
        timeout_s=settings.settle_timeout_s,
    )
    left: dict[str, list[str]] = {}
    for stack in outcome.stacks:
        for kind, names in list_residue(seams.swarm, f"{LABEL_STACK}={stack}").items():
            left.setdefault(kind, []).extend(names)
    return Observation(outcome, baseline, after, left, t1 - t0, time.monotonic() - t1)


def judge(obs: Observation, settings: Settings) -> list[Check]:
    checks = judge_outcome(obs.outcome, list(settings.deploy.tiers), settings.network)
    # Driver checks share the deploy's time; the teardown check has its own.
    checks = [replace(c, duration_s=c.duration_s or obs.deploy_s) for c in checks]
    return [*checks, clean_teardown(obs)]


def clean_teardown(obs: Observation) -> Check:
    """Residue of the app's stacks is zero and no endpoint is left that only they could
    explain (other services' churn on a shared network is reported, not blamed on the app).
    No stack to watch is an error: a teardown check that watched nothing proves nothing."""
    outcome, check_id = obs.outcome, Family.DEPLOY.id("teardown")
    if not outcome.stacks:
        described = outcome.stack or "the app"
        return Check(
            check_id,
            Gate.M2,
            Status.ERROR,
            f"no object of {described} remains; no endpoint left behind",
            "no stack to watch",
            f"{described} was never seen on the network during the run",
            obs.deploy_s,
        )
    stack = ", ".join(outcome.stacks)
    names = residue_names(obs.left)
    share = obs.share
    leaked = share.leaked if share else 0
    ok = not names and leaked == 0
    found = f"{len(names)} objects left" + (f" ({', '.join(names)})" if names else "")
    if share is not None and obs.after is not None:
        found += (
            f"; endpoints {obs.after.used}: {share.ours_left} still the app's, "
            f"{share.unexplained} unexplained, {share.others:+d} from other services"
        )
    reported = outcome.clean_teardown_reported
    detail = "" if reported is None else f"the driver reported clean_teardown={reported}"
    if leaked:
        detail = f"{leaked} endpoint(s) not released after the app was removed; " + detail
    return Check(
        check_id,
        Gate.M2,
        Status.PASS if ok else Status.FAIL,
        f"no object of stack {stack} remains; no endpoint left behind",
        found,
        detail.strip("; "),
        obs.teardown_s,
    )
