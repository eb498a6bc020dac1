"""`pvcheck done`: write `## DONE` only when every gate has a fresh review PASS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pvcheck.config import Config
from pvcheck.records import format_ts
from pvcheck.review import DoneDecision, done_rule, parse_claims, parse_verdicts
from pvcheck.statefiles import docs_lock, read_state, update_sections


def write_done(cfg: Config, now: datetime | None = None) -> DoneDecision:
    paths = cfg.docs.paths
    status, review = paths.status, paths.review
    with docs_lock(paths.folder):
        status_text = read_state(status)
        review_text = read_state(review)
        moment = now or datetime.now(UTC)
        decision = done_rule(
            parse_claims(status_text or "", str(status)),
            parse_verdicts(review_text or "", str(review)),
            moment,
            timedelta(hours=cfg.docs.freshness_h),
        )
        if decision.ok and status_text is not None:
            body = (
                "## DONE\n\n"
                f"Written @{format_ts(moment)}: every gate has a review PASS newer than "
                f"its claim and within {cfg.docs.freshness_h:g} h (see {review.name}).\n"
            )
            update_sections(status, "", {"done": body})
    return decision
