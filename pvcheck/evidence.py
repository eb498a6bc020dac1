"""Evidence: cold commands a reviewer can paste, pure Markdown rendering, and the one writer.

Rendering is pure (Jinja with StrictUndefined) and golden-tested. The functions here are the
only ones that change machine-docs/ (a run's evidence, a review, an unreachable target, `## DONE`
set or withdrawn), each under the docs lock and through statefiles (atomic, sections kept,
journal grows); what the protocol allows is decided by pvcheck.protocol.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import jinja2

from pvcheck.backlog import (
    BUILD_SECTION,
    FINDINGS_SECTION,
    merge_build,
    merge_findings,
    parse_backlog,
)
from pvcheck.claims import m1_claim, m2_claim
from pvcheck.config import Config
from pvcheck.gitdocs import commit_docs
from pvcheck.history import history_record, read_history, trend_svg
from pvcheck.masking import redact
from pvcheck.protocol import (
    DONE_SECTION,
    Veto,
    append_entries,
    done_section,
    entry_gate,
    entry_name,
    find_vetoes,
    has_own_done,
    mark_reviewed,
    review_withdraws_done,
    roll_over,
    run_withdraws_done,
    stray_done_lines,
    unreachable_withdraws_done,
    without_done,
)
from pvcheck.records import GATES, NO_FIGURE, Family, Gate, Status, Verdict, figure, parse_ts
from pvcheck.report import DocsOutcome, Report
from pvcheck.resources import TEMPLATES
from pvcheck.reviewrecord import ReviewResult
from pvcheck.statefiles import (
    DocsPaths,
    append_history,
    append_journal,
    append_only,
    docs_lock,
    one_line_breaks,
    read_state,
    replace_section,
    section_digest,
    sections,
    update_sections,
    write_whole,
    written_body,
)

MAX_NAMES_SHOWN = 1  # names in a table cell; the JSON report keeps them all


def short_names(names: list[str]) -> str:
    """Pure: a table cell's list of names, short enough for the page: the first, and how
    many more."""
    more = len(names) - MAX_NAMES_SHOWN
    return ", ".join(names[:MAX_NAMES_SHOWN]) + (f" +{more} more" if more > 0 else "") or "none"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=one_line,
    )
    # The filters below only keep their own syntax; one_line makes every value one line.
    env.filters["cell"] = lambda v: Cell(str(v).replace("|", "\\|"))
    # A line inside a fenced block: it cannot close the fence either.
    env.filters["code_line"] = lambda v: str(v).replace("`" * 3, "'" * 3).replace("~~~", "-")
    # A name from the host shown as code: backticks cannot end the span.
    env.filters["code"] = lambda v: "`" + str(v).replace("`", "'") + "`"
    # A figure the run did not measure: one spelling everywhere (records.NO_FIGURE).
    env.filters["figure"] = figure
    env.globals["no_figure"] = NO_FIGURE
    env.filters["short_names"] = short_names
    return env


# Every line break str.splitlines() knows ("\r\n" is one).
_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# What makes a line structure when a value starts it: a heading or a code fence.
_LEADS = re.compile(r"^(\s*)(#|```|~~~)")


class Cell(str):
    """A table cell's text: it sits between `|`s, never at a line's start, so a leading `#`
    (a claim's EXPECTED `## DONE`) is kept as written."""

    __slots__ = ()


def one_line(value: object) -> str:
    """The rule for every value a template inserts (the environment's finalize): text from a
    host, a harness, a report or a config becomes one line that cannot be, or start, a
    section marker, a heading or a code fence. A clean one-line value is unchanged."""
    text = _BREAKS.sub(" ", str(value)).replace("<!--", "&lt;!--")
    if isinstance(value, Cell):
        return text
    return _LEADS.sub(r"\1\\\2", text, count=1)


def render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def _context(report: Report, cfg: Config, vetoes: list[str] | None = None) -> dict[str, Any]:
    return {
        "vetoes": vetoes or [],
        "report": report,
        "cfg": cfg,
        "phase": cfg.docs.phase,
        "gates": {g.gate: g for g in report.gates},
        "claims": {Gate.M1: m1_claim(cfg), Gate.M2: m2_claim(report, cfg)},
        "before": report.facts_before,
        "after": report.facts_after,
        "Status": Status,
    }


# STATUS sections a review holds to the run that wrote them: the run's figures and verdict.
# (The gate sections are not: a review marks a verified claim there; their HOW commands are
# compared on their own, review.how_findings.)
HELD_SECTIONS = ("summary", "evidence")


def render_status_sections(
    report: Report, cfg: Config, vetoes: list[str] | None = None
) -> dict[str, str]:
    ctx = _context(report, cfg, vetoes)
    return {
        "summary": render("status_summary.md.j2", **ctx),
        **{f"gate-{g}": render("status_gate.md.j2", gate=g, **ctx) for g in Gate},
        "evidence": render("status_evidence.md.j2", **ctx),
    }


def add_journal_entry(paths: DocsPaths, header: str, entry: str) -> None:
    """One entry in JOURNAL; once JOURNAL has passed its bound, the full entry goes to the
    runs file and JOURNAL gets its heading and where to read it. JOURNAL is never rewritten:
    others append to it too, and a rewrite could lose what one of them appended meanwhile."""
    try:
        size = os.stat(paths.journal, follow_symlinks=False).st_size
    except FileNotFoundError:
        size = 0
    if size <= paths.journal_max_bytes:
        append_journal(paths.journal, header, entry)
        return
    append_journal(
        paths.journal_runs, render("journal_runs_header.md.j2", phase=paths.phase), entry
    )
    heading = entry.strip().splitlines()[0] if entry.strip() else "## (entry)"
    pointer = render(
        "journal_pointer.md.j2",
        heading=heading.removeprefix("## "),
        runs_name=paths.journal_runs.name,
        max_kb=paths.journal_max_bytes // 1024,
    )
    append_journal(paths.journal, header, pointer)


def render_journal_entry(report: Report, cfg: Config) -> str:
    return render("journal_entry.md.j2", **_context(report, cfg))


@dataclass(frozen=True)
class Written:
    paths: dict[str, str]  # kind -> file
    docs: DocsOutcome


def vetoes(paths: DocsPaths) -> list[Veto]:
    """The VETOs standing in REVIEW and STATUS (a person's; pvcheck never removes one)."""
    return find_vetoes(
        (read_state(paths.review), str(paths.review)),
        (read_state(paths.status), str(paths.status)),
    )


def set_done(paths: DocsPaths, at: str, freshness_h: float) -> None:
    """Write pvcheck's `## DONE` section in STATUS (what `pvcheck done` decided; call under
    the docs lock); every other byte of STATUS is kept."""
    update_sections(
        paths.status, "", {DONE_SECTION: done_section(at, freshness_h, paths.review.name)}
    )


def withdraw_done(paths: DocsPaths, why: str, at: str) -> str | None:
    """Remove pvcheck's `## DONE` from STATUS and say why in JOURNAL; call under the docs
    lock. Returns the reason when something was withdrawn."""
    text = read_state(paths.status)
    if text is None or not has_own_done(text, str(paths.status)):
        return None
    write_whole(paths.status, without_done(text, str(paths.status)))
    stray = stray_done_lines(text, str(paths.status))
    entry = render(
        "journal_withdrawn.md.j2",
        at=at,
        why=why,
        stray=stray[0] if stray else None,
        status_name=paths.status.name,
    )
    add_journal_entry(paths, render("journal_header.md.j2", phase=paths.phase), entry)
    return why


def claim_message(report: Report, phase: str) -> str:
    """The docs commit's subject for a run: `claim(…)` when it claims a gate."""
    claimed = [g.gate for g in report.gates if g.status == Status.PASS]
    if claimed:
        tail = "" if report.verdict == Verdict.PASS else f" (verdict {report.verdict.label})"
        return f"claim({phase}): {' '.join(claimed)} by run {report.run_id}{tail}"
    return f"evidence({phase}): run {report.run_id} {report.verdict.label}"


def write_evidence(report: Report, cfg: Config) -> Written:
    """Write STATUS and BACKLOG sections, the run's JSON report, append the JOURNAL entry and
    the history record, redraw the trend chart, withdraw `## DONE` when the run says so and
    commit pvcheck's files when configured; returns the paths and what the protocol did."""
    paths = cfg.docs.paths
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
        standing = vetoes(paths)
        quoted = [v.quoted() for v in standing]
        ctx = _context(report, cfg, quoted)
        backlog = parse_backlog(read_state(paths.backlog), str(paths.backlog))
        items = merge_build(backlog.build, report)
        read_state(paths.journal)
        why = run_withdraws_done(report, cfg.docs.done_follows, standing)
        will_withdraw = why if has_own_done(status_text, str(paths.status)) else None
        bodies = render_status_sections(report, cfg, quoted)
        held = {n: section_digest(written_body(bodies[n])) for n in HELD_SECTIONS}
        docs = DocsOutcome(quoted, will_withdraw, status_digests=held)
        # The report through its model first (a value the model refuses is logged and written
        # unchecked, never costing the run its evidence: Report.as_json).
        report_json = dataclasses.replace(report, docs=docs).to_json()
        if why:
            # First of the writes: one that fails after it cannot leave an old DONE standing.
            withdraw_done(paths, why, report.finished_at)
        append_history(
            paths.history, history_record(report, _seconds(report)), paths.history_archive
        )
        records = read_history(paths.history, limit=30)
        write_whole(paths.trend, trend_svg(records))
        write_whole(paths.report, report_json)
        trend = render("status_trend.md.j2", records=records[-10:], svg_src=paths.trend.name)
        update_sections(
            paths.status,
            render("status_header.md.j2", **ctx),
            {**bodies, "trend": trend},
        )
        update_sections(
            paths.backlog,
            render("backlog_header.md.j2", **ctx),
            {BUILD_SECTION: render("backlog_build.md.j2", items=items)},
        )
        add_journal_entry(
            paths, render("journal_header.md.j2", **ctx), render_journal_entry(report, cfg)
        )
        committed = commit_docs(cfg.docs, claim_message(report, cfg.docs.phase))
    docs = dataclasses.replace(docs, committed=str(committed) if committed else None)
    return Written({kind: str(path) for kind, path in written.items()}, docs)


def require_writable_docs(cfg: Config) -> None:
    """StateFileError (exit 2, naming the folder) now when the docs folder could not take the
    evidence: not root's alone as root, read-only, or its lock not creatable."""
    with docs_lock(cfg.docs.paths.folder):
        pass


def write_unreachable(cfg: Config, run_id: str, at: str, exc: Exception) -> DocsOutcome:
    """What is written when the target cannot be reached: a JOURNAL entry (and DONE goes:
    a run that proved nothing leaves no DONE standing)."""
    paths = cfg.docs.paths
    with docs_lock(paths.folder):  # the folder's checks, as for every write there
        # DONE first: a journal that cannot be appended to must not keep it standing.
        withdrawn = withdraw_done(paths, unreachable_withdraws_done(run_id, cfg.target.name), at)
        add_journal_entry(
            paths,
            render("journal_header.md.j2", phase=paths.phase),
            render(
                "journal_unreachable.md.j2",
                at=at,
                run_id=run_id,
                target=cfg.target.name,
                docker_host=cfg.target.docker_host,
                error=exc,
            ),
        )
        committed = commit_docs(cfg.docs, f"evidence({cfg.docs.phase}): run {run_id} UNREACHABLE")
    return DocsOutcome([], withdrawn, str(committed) if committed else None)


def _seconds(report: Report) -> float | None:
    start, end = parse_ts(report.started_at), parse_ts(report.finished_at)
    return round((end - start).total_seconds(), 1) if start and end else None


def review_message(result: ReviewResult, phase: str) -> str:
    """The docs commit's subject for a review, in the form cc-ci's Adversary commits take
    (`review(pvcheck-M1): M1 PASS — …`): the scope names the phase and the gates reviewed,
    the dash what stands behind the verdicts."""
    gates = list(result.verdicts)
    scope = f"{phase}-{'+'.join(gates)}" if gates else phase
    verdicts = ", ".join(f"{g} {v.label}" for g, v in result.verdicts.items()) or "no gate"
    n = len(result.findings)
    why = f"{n} finding{'' if n == 1 else 's'}" if n else "re-verified from live commands"
    return f"review({scope}): {verdicts} — {why} (run {result.review_id})"


def render_review_entries(result: ReviewResult) -> dict[str, str]:
    """Pure: one dated REVIEW entry per gate (`## M1 — <title>: **PASS** @ <UTC>`)."""
    entries = {}
    for gate in GATES:
        checks = [c for c in result.checks if c.gate == gate]
        findings = [f for f in result.findings if f.gate == gate]
        repro = [
            c.detail
            for c in checks
            if c.status != Status.PASS and c.id.startswith(Family.REVIEW.id("how"))
        ]
        repro += [f.repro for f in findings]
        entries[entry_name(result.review_id, gate)] = render(
            "review_gate.md.j2",
            gate=gate,
            title=GATES[gate],
            verdict=result.verdicts[gate].label,
            at=result.at,
            claim=result.claims[gate],
            review_id=result.review_id,
            checks=checks,
            findings=findings,
            churn=result.churn if gate == Gate.M2 else [],
            repro=repro,
        )
    return entries


def _append_review(paths: DocsPaths, entries: dict[str, str], at: str) -> int:
    """Append the entries to REVIEW and roll its oldest ones over to the archive when it
    outgrows its bound (archive first: a crash in between duplicates, never loses).
    Returns how many entries moved."""
    text = read_state(paths.review)
    where = str(paths.review)
    new = render("review_header.md.j2", phase=paths.phase) if text is None else text
    new = append_entries(new, {k: one_line_breaks(redact(v)) for k, v in entries.items()}, where)
    rolled = roll_over(new, where, paths.review_max_bytes, entry_gate(new, where))
    if rolled.moved:
        head = ""
        if not os.path.lexists(paths.review_archive):  # never read whole: it only grows
            head = render("review_archive_header.md.j2", paths=paths)
        blocks = "".join("\n" + block for block in rolled.moved)
        append_only(paths.review_archive, head + blocks)
        note = f"{len(rolled.moved)} older entries moved to `{paths.review_archive.name}` @{at}.\n"
        new = replace_section(rolled.kept, "archive-note", note, where)
    if new != text:
        write_whole(paths.review, new)
    return len(rolled.moved)


def write_review(result: ReviewResult, cfg: Config) -> Written:
    """REVIEW's dated entries, the Adversary findings in BACKLOG, the PASS header of the
    claim the review verified in STATUS, a JOURNAL entry; DONE withdrawn on a failed gate or
    a VETO; the commit when configured."""
    paths = cfg.docs.paths
    entries = render_review_entries(result)
    with docs_lock(paths.folder):
        backlog = parse_backlog(read_state(paths.backlog), str(paths.backlog))
        items = merge_findings(backlog.findings, result.findings, result.at)
        standing = vetoes(paths)
        why = review_withdraws_done(
            result.review_id,
            result.verdicts,
            [(f.gate, f.title) for f in result.findings],
            standing,
        )
        # First of the writes: one that fails after it cannot leave an old DONE standing.
        withdrawn = withdraw_done(paths, why, result.at) if why else None
        status_text = read_state(paths.status)  # after the withdrawal: DONE is not written back
        moved = _append_review(paths, entries, result.at)
        update_sections(
            paths.backlog,
            render("backlog_header.md.j2", phase=paths.phase),
            {FINDINGS_SECTION: render("backlog_adversary.md.j2", items=items)},
        )
        if status_text is not None:
            # Only the claim this review verified gets its PASS header: re-read under the lock.
            new = mark_reviewed(
                status_text, result.verdicts, result.claims, result.at, str(paths.status)
            )
            if new != status_text:
                write_whole(paths.status, new)
        entry = render(
            "journal_review.md.j2",
            result=result,
            moved=moved,
            archive_name=paths.review_archive.name,
        )
        add_journal_entry(paths, render("journal_header.md.j2", phase=paths.phase), entry)
        committed = commit_docs(cfg.docs, review_message(result, cfg.docs.phase))
    written = {"status": paths.status, "review": paths.review, "backlog": paths.backlog}
    if moved:
        written["review_archive"] = paths.review_archive
    docs = DocsOutcome(
        [v.quoted() for v in standing], withdrawn, str(committed) if committed else None
    )
    return Written({k: str(v) for k, v in {**written, "journal": paths.journal}.items()}, docs)
