"""Evidence tasks: the one writer of machine-docs/ and the Prefect artifacts (stable keys, so
the UI shows each one's history)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pvcheck.config import Config, load_config
from pvcheck.errors import PvcheckError
from pvcheck.evidence import Written, render, short_names, write_evidence
from pvcheck.history import read_history, trend_svg
from pvcheck.masking import redact
from pvcheck.pinned import pinned_all
from pvcheck.records import NO_FIGURE, figure
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


def svg_data_uri(svg: str) -> str:
    """An image the artifact page shows by itself: no file for the browser to resolve."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def allocator_rows(report: Report) -> list[dict[str, Any]]:
    """Pure: one short row per round (the table fits a 1280 px page); the rest of each
    round is in allocator_detail_rows."""
    alloc = report.allocator
    return [
        {
            "round": r.round,
            "stacks": r.stacks,
            "endpoints before→peak→after": (
                f"{sum(r.baseline.values())}→{sum(r.peak.values())}→{sum(r.after.values())}"
            ),
            "leaked": r.leaked_total,
            "settled": "yes" if r.settled else "no",
            "s": round(r.seconds, 1),
        }
        for r in (alloc.rounds if alloc else [])
    ]


def allocator_detail_rows(report: Report) -> list[dict[str, Any]]:
    """Pure: each round's details: allocation, others' churn, the stack networks."""
    alloc = report.allocator
    return [
        {
            "round": r.round,
            "all allocated": "yes" if r.allocated else "no",
            "other services": f"{r.others:+d}",
            "networks stack rm left": len(r.networks_orphaned),
            "still left": short_names(r.networks_left),
        }
        for r in (alloc.rounds if alloc else [])
    ]


def history_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "finished": figure(r.get("at")),
            "run": figure(r.get("run_id")),
            "verdict": str(r.get("verdict", "")).upper() or NO_FIGURE,
            "endpoints": figure(r.get("endpoints")),
            "headroom %": figure(r.get("headroom_pct")),
            "leaked": figure(r.get("leaked")),
            "s": figure(r.get("seconds")),
        }
        for r in reversed(records)
    ]


FLEET_LEAKS_SHOWN = 5  # the last runs' leaks a fleet row shows (and its trend reads)


def fleet_rows(histories: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Pure: each served host's latest verdict, headroom and leak trend (last runs)."""
    rows = []
    for host, records in histories.items():
        last = records[-1] if records else {}
        leaks = [r["leaked"] for r in records if isinstance(r.get("leaked"), int)]
        leaks = leaks[-FLEET_LEAKS_SHOWN:]
        rows.append(
            {
                "host": host,
                "verdict": str(last.get("verdict", "no run yet")).upper(),
                "finished": figure(last.get("at")),
                "headroom %": figure(last.get("headroom_pct")),
                "endpoints": figure(last.get("endpoints")),
                "leaked, last runs": " ".join(map(str, leaks)) or NO_FIGURE,
                "leak trend": _trend(leaks),
            }
        )
    return rows


def _trend(leaks: list[int]) -> str:
    """Pure: how the leaked addresses moved over the last runs."""
    if not leaks:
        return NO_FIGURE
    if not any(leaks):
        return "no leak"
    if leaks[-1] > leaks[0]:
        return "rising"
    return "none in latest run" if leaks[-1] == 0 else "steady or falling"


def fleet_histories() -> dict[str, list[dict[str, Any]]]:
    """The history of every host this process serves (its pinned configs)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, path in pinned_all().items():
        try:
            out[name] = read_history(load_config(path).docs.paths.history, limit=10)
        except PvcheckError:
            out[name] = []
    return out


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
            "status_trend.md.j2", records=records, svg_src=svg_data_uri(trend_svg(records))
        ),
    }
    what = {
        "pvcheck-verdict": "Verdict: gates and every check",
        "pvcheck-network-facts": "Network and control plane, before and after",
        "pvcheck-allocator": "Allocator reproduction",
        "pvcheck-trend": "Trend of the last runs (chart)",
        "pvcheck-allocator-rounds": "Allocator rounds (table)",
        "pvcheck-allocator-round-details": "Allocator rounds, details (table)",
        "pvcheck-history": "Run history (table)",
        "pvcheck-fleet": "Every served host's latest verdict (table)",
    }

    def description(key: str) -> str:
        return f"{what[key]} — run {report.run_id}, {report.verdict.label}"

    for key in ARTIFACT_KEYS:
        create_markdown_artifact(
            key=key, markdown=redact(bodies[key]), description=description(key)
        )
    tables = {
        "pvcheck-allocator-rounds": allocator_rows(report),
        "pvcheck-allocator-round-details": allocator_detail_rows(report),
        "pvcheck-history": history_rows(records),
        "pvcheck-fleet": fleet_rows(fleet_histories()),
    }
    for key, rows in tables.items():
        if rows:
            clean = [
                {k: redact(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows
            ]
            create_table_artifact(key=key, table=clean, description=description(key))
