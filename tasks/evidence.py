"""Evidence tasks: the one writer of machine-docs/ and the Prefect artifacts (stable keys, so
the UI shows each one's history)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pvcheck.config import Config
from pvcheck.evidence import Written, render, write_evidence
from pvcheck.history import read_history
from pvcheck.masking import redact
from pvcheck.report import Report

ARTIFACT_KEYS = ("pvcheck-verdict", "pvcheck-network-facts", "pvcheck-allocator", "pvcheck-trend")


@task(name="write-evidence", cache_policy=NO_CACHE)
def write_evidence_files(report: Report, cfg: Config) -> Written:
    written = write_evidence(report, cfg)
    log = get_run_logger()
    for kind, path in written.paths.items():
        log.info("wrote %s: %s", kind, path)
    for line in written.docs.lines():
        log.warning("%s", line)
    return written


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(report: Report) -> None:
    history = report.evidence.get("history")
    records = read_history(Path(history), limit=10) if history else []
    bodies = {
        "pvcheck-verdict": render("verdict.md.j2", report=report),
        "pvcheck-network-facts": render(
            "status_evidence.md.j2",
            report=report,
            before=report.facts_before,
            after=report.facts_after,
        ),
        "pvcheck-allocator": render("allocator.md.j2", report=report, alloc=report.allocator),
        "pvcheck-trend": render(
            "status_trend.md.j2",
            records=records,
            svg_name=Path(report.evidence.get("trend", "")).name,
        ),
    }
    for key in ARTIFACT_KEYS:
        create_markdown_artifact(
            key=key,
            markdown=redact(bodies[key]),
            description=f"pvcheck {report.verdict} run {report.run_id}",
        )
