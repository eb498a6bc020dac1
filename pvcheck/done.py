"""`## DONE` tracks the truth: `pvcheck done` writes it only when every gate has a fresh review
PASS and no VETO stands; a failed or incomplete run, a failed review, a VETO or (with
`docs.done_follows = "latest"`) a new claim awaiting review withdraws it. The rule is
protocol.done_rule; the writes are evidence.set_done and evidence.withdraw_done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pvcheck.config import Config
from pvcheck.evidence import set_done, vetoes, withdraw_done
from pvcheck.gitdocs import Committed, commit_docs
from pvcheck.protocol import Veto, done_rule, parse_claims, read_verdicts
from pvcheck.records import format_ts
from pvcheck.statefiles import docs_lock, read_state


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
        claims = parse_claims(status_text or "", str(status))
        # Every verdict in REVIEW counts, whoever wrote it and in whichever of the record's
        # forms: a real Adversary's FAIL dated after pvcheck's PASS blocks DONE.
        reading = read_verdicts(read_state(paths.review) or "", str(paths.review))
        standing = vetoes(paths)
        decision = done_rule(
            claims,
            reading.verdicts,
            moment,
            timedelta(hours=cfg.docs.freshness_h),
            cfg.docs.done_follows,
            standing,
            reading.unread,
        )
        withdrawn = None
        if decision.ok and status_text is not None:
            set_done(paths, at, cfg.docs.freshness_h)
            message = f"done({cfg.docs.phase}): ## DONE @{at}"
        else:
            withdrawn = withdraw_done(paths, decision.withdrawal, at)
            message = f"done({cfg.docs.phase}): DONE withdrawn @{at}"
        committed = commit_docs(cfg.docs, message) if (withdrawn or decision.ok) else None
    return DoneResult(decision.ok, decision.problems, standing, withdrawn, committed)
