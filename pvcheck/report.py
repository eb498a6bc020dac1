"""The run report: checks, gates, verdict and facts, with its JSON and JUnit forms."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from pydantic import ValidationError

from pvcheck.allocator import AllocatorResult
from pvcheck.errors import PvcheckError
from pvcheck.hostfacts import HostFacts
from pvcheck.logscan import LogScan
from pvcheck.masking import redact
from pvcheck.records import (
    GATES,
    Check,
    GateResult,
    Outcome,
    Stage,
    StageOutcome,
    Status,
    Verdict,
    judge_gate,
    unproven,
    verdict,
)
from pvcheck.reportmodel import ReportDocument, refusal
from pvcheck.seams import AdoptedRun

log = logging.getLogger(__name__)


@dataclass
class DocsOutcome:
    """What the protocol did with machine-docs when the run or review wrote its evidence."""

    vetoes: list[str] = field(default_factory=list)  # each standing VETO, quoted
    withdrawn: str | None = None  # why `## DONE` was withdrawn now
    committed: str | None = None  # the docs commit, or why it was not made (None: not asked)
    # STATUS sections the run wrote whose text a review holds to the run: name -> digest
    # (statefiles.section_digest).
    status_digests: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"VETO ({v}): `pvcheck done` is blocked until it is removed by hand"
            for v in self.vetoes
        ]
        if self.withdrawn:
            out.append(f"## DONE withdrawn: {self.withdrawn}")
        if self.committed:
            out.append(f"docs commit: {self.committed}")
        return out


@dataclass
class Report:
    run_id: str
    target: str
    config_path: str
    started_at: str
    finished_at: str = ""
    checks: list[Check] = field(default_factory=list)
    stages: dict[Stage, StageOutcome] = field(default_factory=dict)
    target_via: str = ""  # how the host was reached (here, or ssh with its host key file)
    facts_before: HostFacts | None = None
    facts_after: HostFacts | None = None
    logs: LogScan | None = None  # the window before the run (logs.window_h)
    run_logs: LogScan | None = None  # the run's own window (logs.fresh-run)
    allocator: AllocatorResult | None = None  # None: the reproduction did not run
    deploy_stacks: list[str] = field(default_factory=list)  # the stacks the deploy proof used
    deploy_adopted: AdoptedRun | None = None  # the finished harness run taken as the proof
    evidence: dict[str, str] = field(default_factory=dict)
    docs: DocsOutcome = field(default_factory=DocsOutcome)

    def add(self, checks: list[Check]) -> list[Check]:
        self.checks += checks
        return checks

    @property
    def gates(self) -> list[GateResult]:
        return [judge_gate(g, self.checks) for g in GATES]

    @property
    def verdict(self) -> Verdict:
        return verdict(self.gates)

    @property
    def incomplete_reason(self) -> str:
        """Why the verdict is INCOMPLETE (empty otherwise)."""
        return unproven(self.gates) if self.verdict == Verdict.INCOMPLETE else ""

    @property
    def traffic_blocked(self) -> bool:
        """A precondition or core route was down, so no test traffic started."""
        stage = self.stages.get(Stage.TRAFFIC)
        return stage is not None and stage.outcome == Outcome.BLOCKED

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status in (Status.FAIL, Status.ERROR)]

    def document(self) -> ReportDocument:
        """The report as its one model (pvcheck.reportmodel): REPORT json and `--json` are its
        dump, and the review reads them back through it. A value the review would refuse is
        refused here (PvcheckError naming the field)."""
        try:
            return ReportDocument.written(self._parts())
        except ValidationError as exc:
            where, why = refusal(exc)
            raise PvcheckError(
                f"run {self.run_id}: the report's field {where} is one pvcheck's review would "
                f"refuse: {why}"
            ) from None

    def _parts(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "incomplete_reason": self.incomplete_reason,
            "run_id": self.run_id,
            "target": self.target,
            "config": self.config_path,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "gates": {
                g.gate: {"status": g.status, "title": g.title, "checks": len(g.checks)}
                for g in self.gates
            },
            "stages": {str(k): str(v) for k, v in self.stages.items()},
            "checks": [c.as_dict() for c in self.checks],
            "facts": {
                "before": self.facts_before.as_dict() if self.facts_before else None,
                "after": self.facts_after.as_dict() if self.facts_after else None,
            },
            "logs": asdict(self.logs) if self.logs else None,
            "evidence": self.evidence,
            "target_via": self.target_via,
            "run_logs": asdict(self.run_logs) if self.run_logs else None,
            "deploy": {
                "stacks": self.deploy_stacks,
                "adopted": asdict(self.deploy_adopted) if self.deploy_adopted else None,
            },
            "docs": asdict(self.docs),
            "allocator": self.allocator.as_dict() if self.allocator else None,
        }

    def as_json(self) -> dict[str, Any]:
        """The model's dump. A host value the model refuses (the review would refuse the
        file, naming the field) never costs the run its evidence: the parts are written as
        they are, and the refusal is logged."""
        try:
            return self.document().model_dump(mode="json")
        except PvcheckError as exc:
            log.warning("%s; written unchecked", exc)
            parts = self._parts()
            if parts["allocator"] is None:
                del parts["allocator"]
            loaded: dict[str, Any] = json.loads(json.dumps(parts, default=str))
            return loaded

    def to_json(self) -> str:
        return redact(json.dumps(self.as_json(), indent=2, sort_keys=False)) + "\n"

    def to_junit(self) -> str:
        suites = ET.Element("testsuites", name=f"pvcheck {self.run_id} {self.verdict.label}")
        for gate in self.gates:
            unproven_case = int(gate.status == Status.SKIP)
            suite = ET.SubElement(
                suites,
                "testsuite",
                name=f"{gate.gate} {gate.title}",
                tests=str(len(gate.checks) + unproven_case),
                failures=str(sum(c.status == Status.FAIL for c in gate.checks)),
                errors=str(sum(c.status == Status.ERROR for c in gate.checks) + unproven_case),
                skipped=str(sum(c.status == Status.SKIP for c in gate.checks)),
            )
            if unproven_case:
                # An unproven gate is not green: a JUnit reader sees it as an error case.
                case = ET.SubElement(suite, "testcase", classname=gate.gate, name="gate.proven")
                ET.SubElement(
                    case, "error", type="incomplete", message=f"{gate.gate} not proven"
                ).text = gate.unproven_reason
            for check in gate.checks:
                case = ET.SubElement(
                    suite,
                    "testcase",
                    classname=gate.gate,
                    name=check.id,
                    time=f"{check.duration_s:.6f}",
                )
                text = f"expected: {check.expected}\nfound: {check.found}\n{check.detail}"
                if check.status == Status.FAIL:
                    ET.SubElement(case, "failure", message=check.detail or check.found).text = text
                elif check.status == Status.ERROR:
                    ET.SubElement(case, "error", message=check.detail or check.found).text = text
                elif check.status == Status.SKIP:
                    ET.SubElement(case, "skipped", message=check.detail)
        return redact(ET.tostring(suites, encoding="unicode")) + "\n"
