"""Evidence: cold commands a reviewer can paste, pure Markdown rendering, and the one writer.

Rendering is pure (Jinja with StrictUndefined) and golden-tested; write_evidence is the only
function that touches machine-docs/, through statefiles (atomic, sections kept, journal grows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from pvcheck.claims import m1_claim, m2_claim
from pvcheck.config import Config
from pvcheck.history import append_history, history_record, read_history, trend_svg
from pvcheck.records import GATES, Check, Family, Gate, Status, parse_ts
from pvcheck.report import Report
from pvcheck.review import (
    ReviewResult,
    mark_gate_passed,
    merge_findings,
    parse_claims,
    parse_findings,
)
from pvcheck.safeio import atomic_write
from pvcheck.statefiles import (
    append_journal,
    docs_lock,
    read_state,
    section_body,
    sections,
    update_sections,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    # A name from the host shown as code: backticks and line breaks cannot end the span.
    env.filters["code"] = lambda v: "`" + str(v).replace("`", "'").replace("\n", " ") + "`"
    return env


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def _context(report: Report, cfg: Config) -> dict[str, Any]:
    return {
        "report": report,
        "cfg": cfg,
        "phase": cfg.docs.phase,
        "gates": {g.gate: g for g in report.gates},
        "claims": {Gate.M1: m1_claim(cfg), Gate.M2: m2_claim(report, cfg)},
        "before": report.facts_before,
        "after": report.facts_after,
        "Status": Status,
    }


def render_status_sections(report: Report, cfg: Config) -> dict[str, str]:
    ctx = _context(report, cfg)
    return {
        "summary": render("status_summary.md.j2", **ctx),
        **{f"gate-{g}": render("status_gate.md.j2", gate=g, **ctx) for g in Gate},
        "evidence": render("status_evidence.md.j2", **ctx),
    }


def render_journal_entry(report: Report, cfg: Config) -> str:
    return render("journal_entry.md.j2", **_context(report, cfg))


_ITEM = re.compile(r"^- \[(?P<done>[ x])\] \*\*(?P<num>B\d+)\*\* `(?P<id>[^`]+)`(?P<rest>.*)$")


@dataclass
class BacklogItem:
    num: str
    check_id: str
    done: bool
    text: str


def parse_backlog(body: str | None) -> list[BacklogItem]:
    items = []
    for line in (body or "").splitlines():
        m = _ITEM.match(line)
        if m:
            items.append(BacklogItem(m["num"], m["id"], m["done"] == "x", line))
    return items


def merge_backlog(items: list[BacklogItem], report: Report) -> list[BacklogItem]:
    """Pure: one item per failing check id (never one per run); fixed ones get ticked."""
    failing = {c.id: c for c in report.failing}
    seen = {i.check_id for i in items}
    out = []
    for item in items:
        if item.check_id in failing and item.done:
            item = _item(item.num, failing[item.check_id], report)
        elif item.check_id not in failing and not item.done and _ran(report, item.check_id):
            ticked = item.text.replace("- [ ]", "- [x]", 1)
            item = BacklogItem(
                item.num, item.check_id, True, f"{ticked} — passing @{report.finished_at}"
            )
        out.append(item)
    next_num = 1 + max((int(i.num[1:]) for i in items), default=0)
    for check in report.failing:
        if check.id not in seen:
            out.append(_item(f"B{next_num}", check, report))
            next_num += 1
    return out


def _ran(report: Report, check_id: str) -> bool:
    return any(c.id == check_id and c.status == Status.PASS for c in report.checks)


def _item(num: str, check: Check, report: Report) -> BacklogItem:
    text = (
        f"- [ ] **{num}** `{check.id}` ({check.gate}): expected {check.expected}; "
        f"found {check.found}. {check.detail} — seen in run {report.run_id} @{report.finished_at}"
    ).replace("\n", " ")
    return BacklogItem(num, check.id, False, text)


def write_evidence(report: Report, cfg: Config) -> dict[str, str]:
    """Write STATUS and BACKLOG sections, the run's JSON report, append the JOURNAL entry and
    the history record, and redraw the trend chart; returns the paths."""
    paths = cfg.docs.paths
    ctx = _context(report, cfg)
    written = {
        "status": paths.status,
        "backlog": paths.backlog,
        "journal": paths.journal,
        "history": paths.history,
        "trend": paths.trend,
        "report": paths.report,
    }
    with docs_lock(paths.folder):
        # Read and check everything first: a malformed file stops before anything is written.
        status_text = read_state(paths.status)
        if status_text is not None:
            sections(status_text, str(paths.status))
        backlog_text = read_state(paths.backlog)
        items = merge_backlog(
            parse_backlog(section_body(backlog_text or "", "build-backlog", str(paths.backlog))),
            report,
        )
        read_state(paths.journal)
        append_history(paths.history, history_record(report, _seconds(report)))
        records = read_history(paths.history, limit=30)
        atomic_write(paths.trend, trend_svg(records))
        atomic_write(paths.report, report.to_json())
        trend = render("status_trend.md.j2", records=records[-10:], svg_name=paths.trend.name)
        update_sections(
            paths.status,
            render("status_header.md.j2", **ctx),
            {**render_status_sections(report, cfg), "trend": trend},
        )
        update_sections(
            paths.backlog,
            render("backlog_header.md.j2", **ctx),
            {"build-backlog": render("backlog_build.md.j2", items=items)},
        )
        append_journal(
            paths.journal,
            render("journal_header.md.j2", **ctx),
            render_journal_entry(report, cfg),
        )
    return {kind: str(path) for kind, path in written.items()}


def write_unreachable(cfg: Config, run_id: str, at: str, exc: Exception) -> None:
    """The only thing written when the target cannot be reached: a JOURNAL entry."""
    paths = cfg.docs.paths
    with docs_lock(paths.folder):  # the folder's checks, as for every write there
        append_journal(
            paths.journal,
            render("journal_header.md.j2", phase=paths.phase),
            f"## {at} — run `{run_id}`: UNREACHABLE\n\n- Target `{cfg.target.name}` "
            f"({cfg.target.docker_host}) could not be reached: {exc}. Nothing was checked.\n",
        )


def _seconds(report: Report) -> float | None:
    start, end = parse_ts(report.started_at), parse_ts(report.finished_at)
    return round((end - start).total_seconds(), 1) if start and end else None


def write_review(result: ReviewResult, cfg: Config) -> dict[str, str]:
    """REVIEW's gate sections, the Adversary findings in BACKLOG, the PASS header of the claim
    the review verified in STATUS, and a JOURNAL entry."""
    paths = cfg.docs.paths
    sections = {}
    for gate in GATES:
        claim = result.claims[gate]
        checks = [c for c in result.checks if c.gate == gate]
        findings = [f for f in result.findings if f.gate == gate]
        repro = [
            c.detail
            for c in checks
            if c.status != Status.PASS and c.id.startswith(Family.REVIEW.id("how"))
        ]
        repro += [f.repro for f in findings]
        sections[f"review-{gate}"] = render(
            "review_gate.md.j2",
            gate=gate,
            title=GATES[gate],
            verdict=result.verdicts[gate],
            at=result.at,
            claim=claim,
            review_id=result.review_id,
            checks=checks,
            findings=findings,
            repro=repro,
        )
    with docs_lock(paths.folder):
        backlog_text = read_state(paths.backlog)
        items = merge_findings(
            parse_findings(
                section_body(backlog_text or "", "adversary-findings", str(paths.backlog))
            ),
            result.findings,
            result.at,
        )
        status_text = read_state(paths.status)
        update_sections(paths.review, render("review_header.md.j2", phase=paths.phase), sections)
        update_sections(
            paths.backlog,
            render("backlog_header.md.j2", phase=paths.phase),
            {"adversary-findings": render("backlog_adversary.md.j2", items=items)},
        )
        if status_text is not None:
            # Only the claim this review verified gets its PASS header: re-read under the lock.
            current = parse_claims(status_text, str(paths.status))
            new = status_text
            for name, verdict in result.verdicts.items():
                reviewed = result.claims[name]
                same_claim = (current[name].run_id, current[name].claimed_at) == (
                    reviewed.run_id,
                    reviewed.claimed_at,
                )
                if verdict == "PASS" and same_claim:
                    new = mark_gate_passed(new, name, result.at, str(paths.status))
            if new != status_text:
                atomic_write(paths.status, new)
        entry = f"## {result.at} — review `{result.review_id}`: " + ", ".join(
            f"{g} {v}" for g, v in result.verdicts.items()
        )
        entry += "".join(f"\n- finding: {f.title}" for f in result.findings)
        append_journal(
            paths.journal, render("journal_header.md.j2", phase=paths.phase), entry + "\n"
        )
    written = {"status": paths.status, "review": paths.review, "backlog": paths.backlog}
    return {k: str(v) for k, v in {**written, "journal": paths.journal}.items()}
