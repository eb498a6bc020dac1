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


MAX_HISTORY_BYTES = 16 * 1024 * 1024


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


def trend_svg(records: list[dict[str, Any]], width: int = 640, height: int = 220) -> str:
    """Pure: endpoints (left axis) and leaked addresses (right axis) per run, as SVG."""
    pad_l, pad_r, pad_t, pad_b = 50, 50, 30, 40
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = len(records)

    def xs(i: int) -> float:
        return pad_l + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def value(record: dict[str, Any], key: str) -> float:
        # Leaks as the allocator counts them; older records only have the endpoint delta.
        got = record.get(key)
        if got is None and key == "engine_leaked":
            got = record.get("leaked")
        return float(got) if isinstance(got, int | float) and not isinstance(got, bool) else 0.0

    def series(key: str) -> tuple[list[tuple[float, float]], float]:
        values = [value(r, key) for r in records]
        top = max([*values, 1.0])
        return [(xs(i), pad_t + plot_h * (1 - v / top)) for i, v in enumerate(values)], top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{pad_l}" y="18" font-size="13">pvcheck trend: endpoints (blue, left) and '
        f"leaked by the allocator's count (red, right), last {n} run(s)</text>",
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" '
        f'y2="{pad_t + plot_h}" stroke="#888"/>',
    ]
    for key, colour, anchor, x_label in (
        ("endpoints", "#1f5fbf", "end", pad_l - 6),
        ("engine_leaked", "#c0392b", "start", pad_l + plot_w + 6),
    ):
        points, top = series(key)
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            parts += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points
            ]
        for y, text in ((pad_t + 4, f"{top:g}"), (pad_t + plot_h, "0")):
            parts.append(
                f'<text x="{x_label}" y="{y}" text-anchor="{anchor}" fill="{colour}">{text}</text>'
            )
    for i, record in enumerate(records):
        label = escape(str(record.get("at", ""))[5:16].replace("T", " "))
        if n <= 8 or i in (0, n - 1):
            parts.append(
                f'<text x="{xs(i):.1f}" y="{height - 20}" text-anchor="middle">{label}</text>'
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
