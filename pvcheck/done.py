"""`## DONE` tracks the truth: `pvcheck done` writes it only when every gate has a fresh review
PASS and no VETO stands; a failed or incomplete run, a failed review, a VETO or (with
`docs.done_follows = "latest"`) a new claim awaiting review withdraws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pvcheck.config import Config
from pvcheck.evidence import vetoes, withdraw_done
from pvcheck.gitdocs import Committed, commit_docs
from pvcheck.protocol import Veto
from pvcheck.records import format_ts
from pvcheck.review import done_rule, parse_claims, parse_verdicts
from pvcheck.statefiles import docs_lock, read_state, update_sections


@dataclass(frozen=True)
class DoneResult:
    ok: bool
    problems: list[str]
    vetoes: list[Veto] = field(default_factory=list)
    withdrawn: str | None = None  # why `## DONE` was withdrawn now
    committed: Committed | None = None


def write_done(cfg: Config, now: datetime | None = None) -> DoneResult:
    paths = cfg.docs.paths
    status = paths.status
    moment = now or datetime.now(UTC)
    at = format_ts(moment)
    with docs_lock(paths.folder):
        status_text = read_state(status)
        decision = done_rule(
            parse_claims(status_text or "", str(status)),
            parse_verdicts(read_state(paths.review) or "", str(paths.review)),
            moment,
            timedelta(hours=cfg.docs.freshness_h),
            cfg.docs.done_follows,
        )
        standing = vetoes(paths)
        problems = [f"VETO at {v.quoted()}" for v in standing] + decision.problems
        withdrawn = None
        if not problems and status_text is not None:
            body = (
                "## DONE\n\n"
                f"Written @{at}: every gate has a review PASS newer than its claim and within "
                f"{cfg.docs.freshness_h:g} h, and no VETO stands (see {paths.review.name}).\n"
            )
            update_sections(status, "", {"done": body})
            message = f"done({cfg.docs.phase}): ## DONE @{at}"
        else:
            withdrawn = withdraw_done(paths, "pvcheck done: " + "; ".join(problems), at)
            message = f"done({cfg.docs.phase}): DONE withdrawn @{at}"
        committed = commit_docs(cfg.docs, message) if (withdrawn or not problems) else None
    return DoneResult(not problems, problems, standing, withdrawn, committed)
