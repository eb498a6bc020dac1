"""Result records: every check is one flat record; gates and the verdict are derived from them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# What dockerd logs when swarm's IPAM cannot give a service its VIP: the incident's line.
VIP_SIGNATURE = "could not find an available IP while allocating VIP"
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every timestamp pvcheck writes: UTC, to the second
# A figure a run did not measure (a FAIL before the allocator, facts that could not be read),
# spelt the same in every table, artifact and STATUS: never an empty cell, never a zero.
NO_FIGURE = "n/a"


def figure(value: object) -> object:
    """Pure: a table cell's figure, NO_FIGURE when there is none."""
    return NO_FIGURE if value is None or value == "" else value


def format_ts(when: datetime) -> str:
    return when.strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def docker_time(text: str) -> datetime | None:
    """An engine's timestamp (`2026-06-13T05:38:02.123456789Z`, or with the daemon's offset)
    in UTC; None for anything else. Nanoseconds are cut to what datetime holds."""
    m = _DOCKER_TIME.match(text)
    if m is None:
        return None
    head, frac, zone = m.groups()
    if head.startswith("0001-"):
        return None  # Go's zero time: the engine does not know (swarm networks may say so)
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(f"{head}.{(frac or '').ljust(6, '0')[:6]}{zone}").astimezone(
            UTC
        )
    except ValueError:
        return None


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class Gate(StrEnum):
    M1 = "M1"
    M2 = "M2"


class Family(StrEnum):
    """A check id's first part: which stage made the check (`alloc.leak` is an ALLOC check)."""

    PRE = "pre"
    SVC = "svc"
    ROUTE = "route"
    FACTS = "facts"
    DEPLOY = "deploy"
    ALLOC = "alloc"
    LOGS = "logs"
    GUARD = "guard"
    TEARDOWN = "teardown"
    RUN = "run"
    REVIEW = "review"

    def id(self, name: str) -> str:
        return f"{self.value}.{name}"


class Outcome(StrEnum):
    """How a stage ended, as STATUS and the JSON report show it."""

    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    ALLOWED = "allowed"  # test traffic may start
    BLOCKED = "blocked"  # a precondition or core route is down: no test traffic
    HELD = "held"  # another run or sweep is active: no test traffic
    CLEAN = "clean"
    LEFT = "left"


class Stage(StrEnum):
    PRECONDITIONS = "preconditions"
    ROUTES = "routes"
    TRAFFIC = "traffic"
    DEPLOY = "deploy"
    ALLOCATOR = "allocator"
    GUARD = "guard"
    TEARDOWN = "teardown"
    ABORTED = "aborted"


@dataclass(frozen=True)
class StageOutcome:
    outcome: Outcome
    reason: str = ""

    def __str__(self) -> str:
        if not self.reason:
            return str(self.outcome)
        if self.outcome == Outcome.FAIL:
            return f"fail ({self.reason})"
        return f"{self.outcome}: {self.reason}"


def stage_outcome(checks: list[Check]) -> StageOutcome:
    """Pure: fail naming the failed checks; else skipped with the first real skip's reason."""
    failed = [c.id for c in checks if c.status in (Status.FAIL, Status.ERROR)]
    if failed:
        return StageOutcome(Outcome.FAIL, ", ".join(failed))
    skipped = [c.detail for c in checks if c.status == Status.SKIP and not c.not_applicable]
    return StageOutcome(Outcome.SKIPPED, skipped[0]) if skipped else StageOutcome(Outcome.PASS)


class Verdict(StrEnum):
    """A verdict: a run's (INCOMPLETE: nothing failed, but a gate was not proven) or a
    review's of one gate (PASS or FAIL only).

    The value is the one spelling stored (JSON reports, HISTORY, `== "pass"`); `label` is
    the one way people see it (PASS, FAIL, INCOMPLETE in STATUS, REVIEW, JOURNAL, the CLI).
    """

    PASS = "pass"
    FAIL = "fail"
    INCOMPLETE = "incomplete"

    @property
    def label(self) -> str:
        return self.value.upper()


@dataclass(frozen=True)
class Check:
    """One judged check: what was expected, what was found, and how long finding it took."""

    id: str
    gate: Gate
    status: Status
    expected: str
    found: str
    detail: str = ""
    duration_s: float = 0.0
    # A skip the subject itself declared not applicable (a recipe without backups): shown as
    # skipped, never counted as passed, and it does not leave its gate unproven.
    not_applicable: bool = False

    @property
    def family(self) -> str:
        return self.id.split(".", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gate"] = str(self.gate)
        out["status"] = str(self.status)
        out["duration_s"] = round(self.duration_s, 6)  # a file read takes microseconds
        return out


GATES: dict[Gate, str] = {
    Gate.M1: "Control plane and routing verified",
    Gate.M2: "Real CI and allocator proof verified",
}

# A gate is proven only when each of these check families is present (and all passed).
GATE_REQUIRES: dict[Gate, tuple[Family, ...]] = {
    Gate.M1: (Family.PRE, Family.SVC, Family.ROUTE),
    Gate.M2: (Family.DEPLOY, Family.ALLOC, Family.LOGS, Family.TEARDOWN, Family.GUARD),
}


def skipped(check_id: str, gate: Gate, expected: str, reason: str) -> Check:
    return Check(check_id, gate, Status.SKIP, expected, "not run", reason)


@dataclass(frozen=True)
class GateResult:
    """A gate's status: fail if any check failed or errored; skip if not proven; else pass."""

    gate: Gate
    status: Status
    checks: list[Check] = field(default_factory=list)

    @property
    def title(self) -> str:
        return GATES[self.gate]

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status in (Status.FAIL, Status.ERROR)]

    @property
    def unproven_reason(self) -> str:
        """Why a gate that did not fail is not a pass: its first skip, or what never ran."""
        if self.status != Status.SKIP:
            return ""
        skipped = [c for c in self.checks if c.status == Status.SKIP and not c.not_applicable]
        if skipped:
            return f"{skipped[0].id}: {skipped[0].detail or skipped[0].found}"
        missing = [
            str(f) for f in GATE_REQUIRES[self.gate] if not any(c.family == f for c in self.checks)
        ]
        return "no " + ", ".join(missing) + " checks ran" if missing else "no checks ran"


def judge_gate(gate: Gate, checks: list[Check]) -> GateResult:
    """Pure: a gate passes only when it has checks and every one of them passed.

    A skipped check, or a required family of checks that did not run, means the gate was not
    proven (a skip is never counted as a pass).
    """
    mine = [c for c in checks if c.gate == gate]
    missing = [f for f in GATE_REQUIRES[gate] if not any(c.family == f for c in mine)]
    if any(c.status in (Status.FAIL, Status.ERROR) for c in mine):
        status = Status.FAIL
    elif not mine or missing or any(c.status == Status.SKIP and not c.not_applicable for c in mine):
        status = Status.SKIP
    else:
        status = Status.PASS
    return GateResult(gate, status, mine)


def verdict(gates: list[GateResult]) -> Verdict:
    """FAIL when a gate failed; PASS only when every gate passed; otherwise INCOMPLETE (a
    gate was not proven: a required check skipped or a required family missing)."""
    if any(g.status == Status.FAIL for g in gates):
        return Verdict.FAIL
    if gates and all(g.status == Status.PASS for g in gates):
        return Verdict.PASS
    return Verdict.INCOMPLETE


def unproven(gates: list[GateResult]) -> str:
    """Pure: 'M2 not proven — <reason>' for each gate that neither passed nor failed."""
    return "; ".join(
        f"{g.gate} not proven — {g.unproven_reason}" for g in gates if g.status == Status.SKIP
    )


# Baseline, peak and after of the allocator reproduction, as the report and the history
# record them and a review holds them to.
FIGURES = ("used_before", "peak", "used_after", "leaked_total")
