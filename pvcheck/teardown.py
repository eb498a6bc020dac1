"""Stage teardown (M2): remove everything carrying this run's label, and only that, then
check nothing is left. The janitor does the same for earlier runs that died."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pvcheck.records import Check, Family, Gate, Status
from pvcheck.runs import RunRecord
from pvcheck.seams import Seams, SwarmApi
from pvcheck.stacks import remove_labelled, residue_names
from pvcheck.swarm import LABEL_RUN

# How long removal waits for networks to be released before it reports what is left.
TEARDOWN_TIMEOUT_S = 120.0


def run_label(run_id: str) -> str:
    return f"{LABEL_RUN}={run_id}"


@dataclass(frozen=True)
class Settings:
    run_id: str  # empty: any pvcheck run (a review lists every run's leftovers)
    timeout_s: float = TEARDOWN_TIMEOUT_S

    @property
    def label(self) -> str:
        return run_label(self.run_id) if self.run_id else f"{LABEL_RUN} (any run)"


@dataclass(frozen=True)
class Observation:
    left: dict[str, list[str]]  # what is still there, by kind
    seconds: float
    error: str | None = None  # the host could not be reached: nothing was checked


def sweep(swarm: SwarmApi, settings: Settings) -> Observation:
    t0 = time.monotonic()
    left = remove_labelled(swarm, settings.label, timeout_s=settings.timeout_s)
    return Observation(left, time.monotonic() - t0)


def gather(seams: Seams, settings: Settings) -> Observation:
    try:
        return sweep(seams.swarm, settings)
    except Exception as exc:
        # The host is gone or broken (ssh lost, engine down): the run stays recorded as
        # started and not finished, so the next run's janitor removes what it left.
        return Observation({}, 0.0, str(exc))


def judge(obs: Observation, settings: Settings) -> list[Check]:
    check_id, label = Family.TEARDOWN.id("residue"), settings.label
    if obs.error is not None:
        return [
            Check(
                check_id,
                Gate.M2,
                Status.ERROR,
                f"nothing left with label {label}",
                f"not checked: {obs.error}",
                "the target became unreachable; the next run's janitor removes this run's objects",
            )
        ]
    names = residue_names(obs.left)
    return [
        Check(
            check_id,
            Gate.M2,
            Status.FAIL if names else Status.PASS,
            f"no object labelled {label} remains",
            f"{len(names)} left" + (f": {', '.join(names)}" if names else ""),
            "" if not names else "teardown left objects behind; they are listed by name",
            obs.seconds,
        )
    ]


# --- the janitor -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reaped:
    """Earlier runs that died, and what is left of each after removal."""

    left: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    seconds: float = 0.0


def reap(seams: Seams, dead: list[RunRecord], timeout_s: float) -> Reaped:
    t0 = time.monotonic()
    left = {
        r.run_id: remove_labelled(seams.swarm, run_label(r.run_id), timeout_s=timeout_s)
        for r in dead
    }
    return Reaped(left, time.monotonic() - t0)


def judge_janitor(reaped: Reaped) -> Check:
    """Anything left of an earlier run that died is a failure."""
    left = {run: residue_names(kinds) for run, kinds in reaped.left.items()}
    dirty = {run: names for run, names in left.items() if names}
    return Check(
        Family.TEARDOWN.id("janitor"),
        Gate.M2,
        Status.FAIL if dirty else Status.PASS,
        "nothing left of earlier pvcheck runs that died",
        f"reaped {len(reaped.left)} dead run(s)"
        + (f": {', '.join(sorted(reaped.left))}" if reaped.left else "")
        + (f"; still left: {dirty}" if dirty else ""),
        duration_s=reaped.seconds,
    )
