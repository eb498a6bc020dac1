"""Evidence tasks: the one writer of machine-docs/ and the Prefect artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pvcheck.config import Config
from pvcheck.evidence import render, write_evidence
from pvcheck.report import Report


@task(name="write-evidence", cache_policy=NO_CACHE)
def write_evidence_files(report: Report, cfg: Config) -> dict[str, str]:
    paths = write_evidence(report, cfg)
    for kind, path in paths.items():
        get_run_logger().info("wrote %s: %s", kind, path)
    return paths


@task(name="publish-verdict", cache_policy=NO_CACHE)
def publish_verdict(report: Report) -> None:
    create_markdown_artifact(
        key="pvcheck-verdict",
        markdown=render("verdict.md.j2", report=report),
        description=f"pvcheck verdict {report.verdict} for run {report.run_id}",
    )
