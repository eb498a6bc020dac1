"""The deploy proof: one enrolled recipe deploys through the overlay, passes its tiers and
tears down cleanly. Drivers gather what happened; `judge_outcome` turns it into checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvcheck.deploy.attach import AttachmentSampler
from pvcheck.records import Check, Status

TIER_PASS, TIER_FAIL, TIER_SKIP, TIER_UNVERIFIED = "pass", "fail", "skip", "unver"


@dataclass(frozen=True)
class TierResult:
    tier: str
    status: str  # pass | fail | skip | unver
    detail: str = ""
    not_applicable: bool = False  # declared N/A by the recipe: shown as skipped, never passed


@dataclass
class DeployOutcome:
    """What a driver saw: per-tier results, the overlay attachment, and driver facts."""

    driver: str
    recipe: str
    stack: str  # what the checks call the app's stack: its name, or the harness pattern
    tiers: list[TierResult] = field(default_factory=list)
    # The stacks the app was deployed as, named by the harness or seen on the network: the
    # teardown check watches these. Empty: nothing to watch, which is an error, not a pass.
    stacks: list[str] = field(default_factory=list)
    attached: bool = False
    attach_detail: str = ""
    clean_teardown_reported: bool | None = None  # what the harness itself said, if anything
    info: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def judge_outcome(outcome: DeployOutcome, expected_tiers: list[str], network: str) -> list[Check]:
    """Pure: one check for the attachment, one per expected tier, one for a driver error."""
    checks = []
    if outcome.error:
        checks.append(
            Check(
                "deploy.driver",
                "M2",
                Status.ERROR,
                f"{outcome.driver} driver completes",
                outcome.error,
                f"recipe {outcome.recipe}",
            )
        )
    checks.append(
        Check(
            "deploy.attached",
            "M2",
            Status.PASS if outcome.attached else Status.FAIL,
            f"a service of {outcome.stack} seen attached to {network} during the run",
            outcome.attach_detail or ("attached" if outcome.attached else "never seen attached"),
        )
    )
    by_tier = {t.tier: t for t in outcome.tiers}
    for tier in expected_tiers:
        result = by_tier.get(tier)
        if result is None:
            missing = f"the {outcome.driver} driver reported no {tier} tier"
            checks.append(
                Check(f"deploy.tier.{tier}", "M2", Status.FAIL, "pass", "not reported", missing)
            )
            continue
        status = {TIER_PASS: Status.PASS, TIER_SKIP: Status.SKIP}.get(result.status, Status.FAIL)
        detail = result.detail
        if result.not_applicable:
            detail = f"not applicable: {result.detail}"
        checks.append(
            Check(
                f"deploy.tier.{tier}",
                "M2",
                status,
                "pass",
                result.status,
                detail,
                not_applicable=result.not_applicable,
            )
        )
    return checks


def watched_stacks(named: str | None, sampler: AttachmentSampler) -> list[str]:
    """The stacks to check the teardown of: the one named (by the config or the harness's
    results), else every harness-named stack seen. A stack never seen on the network during
    the run is not watched: a teardown check of it would pass having watched nothing."""
    if named:
        return [named] if named in sampler.stacks else []
    return sorted(sampler.stacks)


def fixed_stack(stack: str | None, pattern: str | None, recipe: str) -> str | None:
    """The stack name a harness is configured to use; the recipe's name when neither a name
    nor a pattern is configured (harnesses that name the stack after the recipe)."""
    return stack or (None if pattern else recipe)
