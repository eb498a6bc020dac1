"""A review's record: what the independent review found and its verdict per gate, as the
evidence writer renders it (REVIEW, BACKLOG findings, STATUS PASS headers) and the JSON
report shows it. Judged in pvcheck.review; below both the review and the writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pvcheck.protocol import GateClaim
from pvcheck.records import Check, Gate, Verdict
from pvcheck.report import DocsOutcome


@dataclass(frozen=True)
class Finding:
    """Something the review saw that the builder's claims do not show."""

    key: str  # stable across reviews: the same problem found again is the same finding
    gate: Gate
    title: str
    repro: str


@dataclass
class ReviewResult:
    review_id: str
    at: str
    claims: dict[str, GateClaim]
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # gate -> PASS or FAIL
    evidence: dict[str, str] = field(default_factory=dict)
    churn: list[str] = field(default_factory=list)  # others' change since the claim
    docs: DocsOutcome = field(default_factory=DocsOutcome)

    @property
    def verdict(self) -> Verdict:
        passed = self.verdicts and all(v == Verdict.PASS for v in self.verdicts.values())
        return Verdict.PASS if passed else Verdict.FAIL

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "review_id": self.review_id,
            "at": self.at,
            "gates": {
                g: {
                    "status": v.value,
                    "claim_run_id": self.claims[g].run_id,
                    "findings": [f.title for f in self.findings if f.gate == g],
                }
                for g, v in self.verdicts.items()
            },
            "checks": [c.as_dict() for c in self.checks],
            "findings": [f.__dict__ for f in self.findings],
            "churn": self.churn,
            "evidence": self.evidence,
            "docs": self.docs.__dict__,
        }
