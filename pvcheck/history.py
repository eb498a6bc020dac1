"""Run history: one compact JSON line per run (appended by statefiles.append_history), and a
small SVG trend chart of the recent runs (endpoints and leaked addresses over time) that
renders without a display."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from pvcheck.allocator import AllocatorResult, forecasts
from pvcheck.report import Report
from pvcheck.safeio import read_capped
from pvcheck.statefiles import MAX_HISTORY_BYTES


def history_record(report: Report, seconds: float | None = None) -> dict[str, Any]:
    """Pure: what one run adds to the history."""
    after = report.facts_after.network if report.facts_after else None
    alloc = report.allocator
    return {
        "at": report.finished_at,
        "run_id": report.run_id,
        "verdict": str(report.verdict),
        "incomplete_reason": report.incomplete_reason or None,
        "gates": {g.gate: str(g.status) for g in report.gates},
        "subnet": after.subnet if after else None,
        "endpoints": after.used if after else None,
        "headroom_pct": round(after.headroom_pct, 3) if after else None,
        "leaked": alloc.leaked_total if alloc else None,
        "allocator": alloc.figures() if alloc else None,
        # The allocator's own count (not the endpoint list) and the forecast, for the trend.
        "engine_leaked": alloc.engine_leaked if alloc else None,
        "days_to_exhaustion": _days(alloc) if alloc else None,
        "seconds": seconds,
        "stage_seconds": {c.id: round(c.duration_s, 2) for c in report.checks if c.duration_s >= 1},
    }


def _days(alloc: AllocatorResult) -> dict[str, float | None]:
    return {f.network: None if f.days is None else round(f.days, 1) for f in forecasts(alloc)}


def read_history(path: Path, limit: int = 30) -> list[dict[str, Any]]:
    """The last `limit` records; torn or foreign lines are skipped, never fatal."""
    data = read_capped(path, MAX_HISTORY_BYTES)
    if data is None:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    out = []
    for line in lines[-limit * 2 :]:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and "run_id" in record:
            out.append(record)
    return out[-limit:]


BLUE, RED = "#1f5fbf", "#c0392b"
# The two series: key, colour, the axis title (with its unit), and the legend's words.
SERIES = (
    ("endpoints", BLUE, "endpoints in use (count)", "endpoints in use on the network"),
    ("engine_leaked", RED, "leaked addresses (count)", "addresses leaked (allocator's count)"),
)


def _figure(record: dict[str, Any], key: str) -> float | None:
    """A run's figure; None when the run did not measure it (it is left out, never a 0)."""
    got = record.get(key)
    if got is None and key == "engine_leaked":  # older records: the endpoint delta only
        got = record.get("leaked")
    return float(got) if isinstance(got, int | float) and not isinstance(got, bool) else None


def trend_svg(records: list[dict[str, Any]], width: int = 640, height: int = 260) -> str:
    """Pure: endpoints (left axis) and leaked addresses (right axis) per run, as SVG; both
    axes titled with their unit, the time axis too, and a legend. A run without a figure
    has no point on that line."""
    pad_l, pad_r, pad_t, pad_b = 64, 64, 48, 52
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    bottom, n = pad_t + plot_h, len(records)

    def xs(i: int) -> float:
        return pad_l + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{pad_l}" y="16" font-size="13">pvcheck trend, last {n} run(s)</text>',
        f'<line x1="{pad_l}" y1="{bottom}" x2="{pad_l + plot_w}" y2="{bottom}" stroke="#888"/>',
    ]
    for index, (key, colour, axis, legend) in enumerate(SERIES):
        left = index == 0
        edge = pad_l if left else pad_l + plot_w
        values = [_figure(r, key) for r in records]
        top = max([v for v in values if v is not None] + [1.0])
        points = [
            (xs(i), pad_t + plot_h * (1 - v / top)) for i, v in enumerate(values) if v is not None
        ]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            parts += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points
            ]
        # The axis: its line, its ticks (0, half, top) and its title with the unit.
        parts.append(
            f'<line x1="{edge}" y1="{pad_t}" x2="{edge}" y2="{bottom}" stroke="{colour}"/>'
        )
        tick_x, anchor = (edge - 6, "end") if left else (edge + 6, "start")
        for fraction in (0.0, 0.5, 1.0):
            y = bottom - plot_h * fraction
            parts.append(
                f'<text x="{tick_x}" y="{y + 4:.1f}" text-anchor="{anchor}" fill="{colour}">'
                f"{top * fraction:g}</text>"
            )
        title_x = 14 if left else width - 10
        parts.append(
            f'<text x="{title_x}" y="{pad_t + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="{colour}" transform="rotate(-90 {title_x} {pad_t + plot_h / 2:.1f})">'
            f"{axis}</text>"
        )
        legend_x = pad_l + index * plot_w // 2
        parts += [
            f'<line x1="{legend_x}" y1="32" x2="{legend_x + 18}" y2="32" stroke="{colour}" '
            'stroke-width="2"/>',
            f'<text x="{legend_x + 24}" y="36" fill="{colour}">{legend}</text>',
        ]
    for i, record in enumerate(records):
        label = escape(str(record.get("at", ""))[5:16].replace("T", " "))
        if n <= 8 or i in (0, n - 1):
            parts.append(
                f'<text x="{xs(i):.1f}" y="{bottom + 16}" text-anchor="middle">{label}</text>'
            )
    parts.append(
        f'<text x="{pad_l + plot_w / 2:.1f}" y="{bottom + 32}" text-anchor="middle">'
        "run finished (UTC, month-day hour:minute)</text>"
    )
    days = records[-1].get("days_to_exhaustion") if records else None
    if isinstance(days, dict) and days:
        text = "; ".join(
            f"{k}: {'never' if v is None else f'{v:g} days'}" for k, v in sorted(days.items())
        )
        parts.append(
            f'<text x="{pad_l}" y="{height - 4}">to exhaustion (last run): {escape(text)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
