"""Result records: every check is one flat record; gates and the verdict are derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every timestamp pvcheck writes: UTC, to the second


def format_ts(when: datetime) -> str:
    return when.strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class Check:
    """One judged check: what was expected, what was found, and how long finding it took."""

    id: str
    gate: str
    status: Status
    expected: str
    found: str
    detail: str = ""
    duration_s: float = 0.0
    # A skip the subject itself declared not applicable (a recipe without backups): shown as
    # skipped, never counted as passed, and it does not leave its gate unproven.
    not_applicable: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        out["duration_s"] = round(self.duration_s, 3)
        return out


GATES: dict[str, str] = {
    "M1": "Control plane and routing verified",
    "M2": "Real CI and allocator proof verified",
}

# A gate is proven only when each of these check families is present (and all passed).
GATE_REQUIRES: dict[str, tuple[str, ...]] = {
    "M1": ("pre.", "svc.", "route."),
    "M2": ("deploy.", "alloc.", "logs.", "teardown.", "guard."),
}


@dataclass(frozen=True)
class GateResult:
    """A gate's status: fail if any check failed or errored; skip if not proven; else pass."""

    gate: str
    status: Status
    checks: list[Check] = field(default_factory=list)

    @property
    def title(self) -> str:
        return GATES.get(self.gate, self.gate)

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status in (Status.FAIL, Status.ERROR)]


def judge_gate(gate: str, checks: list[Check]) -> GateResult:
    """Pure: a gate passes only when it has checks and every one of them passed.

    A skipped check, or a required family of checks that did not run, means the gate was not
    proven (a skip is never counted as a pass).
    """
    mine = [c for c in checks if c.gate == gate]
    missing = [p for p in GATE_REQUIRES.get(gate, ()) if not any(c.id.startswith(p) for c in mine)]
    if any(c.status in (Status.FAIL, Status.ERROR) for c in mine):
        status = Status.FAIL
    elif not mine or missing or any(c.status == Status.SKIP and not c.not_applicable for c in mine):
        status = Status.SKIP
    else:
        status = Status.PASS
    return GateResult(gate, status, mine)


def verdict(gates: list[GateResult]) -> Status:
    """PASS when no gate failed and at least one gate passed."""
    if any(g.status == Status.FAIL for g in gates):
        return Status.FAIL
    return Status.PASS if any(g.status == Status.PASS for g in gates) else Status.FAIL
