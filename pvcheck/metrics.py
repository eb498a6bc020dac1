"""Prometheus gauges of a run, in node_exporter's textfile format (`metrics.textfile`).

Built purely from the run's Report: the verdict and each gate (0/1), when the run finished
and how long it took, the shared network's endpoints, capacity and headroom after the run,
the addresses the allocator itself counted as leaked, the days until each network runs out,
the VIP-signature and GC-race lines of the log windows, the residue teardown left, and how
long each check took. Every metric is a gauge (each run replaces the last run's file) with a
`host` label; a figure the run did not produce (no allocator stage, an unreadable log) is
absent, never 0. Written atomically after the evidence; a failure is a warning and never
changes the verdict.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from pvcheck.allocator import forecasts
from pvcheck.config import Config
from pvcheck.errors import StateFileError
from pvcheck.logscan import GC_RACE, LogScan
from pvcheck.records import Family, Status, Verdict, parse_ts
from pvcheck.report import Report
from pvcheck.safeio import atomic_write, require_root_only

log = logging.getLogger(__name__)

# name -> (help, labels besides `host`): every metric pvcheck writes.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pvcheck_verdict_pass": ("1 when the last run's verdict was PASS, else 0", ()),
    "pvcheck_verdict_incomplete": (
        "1 when the last run's verdict was INCOMPLETE (nothing failed, a gate unproven)",
        (),
    ),
    "pvcheck_gate_pass": ("1 when the gate passed in the last run, else 0", ("gate",)),
    "pvcheck_last_run_timestamp_seconds": ("when the last run finished, Unix time", ()),
    "pvcheck_last_run_duration_seconds": ("how long the last run took", ()),
    "pvcheck_network_endpoints": ("endpoints on the shared network after the run", ("network",)),
    "pvcheck_network_capacity": ("usable addresses of the shared network", ("network",)),
    "pvcheck_network_headroom_ratio": (
        "free share of the shared network's addresses after the run (0 to 1)",
        ("network",),
    ),
    "pvcheck_allocator_leaked_addresses": (
        "addresses the allocator still held on the scratch network after the reproduction",
        (),
    ),
    "pvcheck_exhaustion_days": (
        "days until the network runs out at the measured leak (+Inf: no leak)",
        ("network",),
    ),
    "pvcheck_vip_signature_lines": (
        "docker log lines with the VIP signature (window: before = the window before the "
        "run, run = the run's own)",
        ("window",),
    ),
    "pvcheck_gc_race_lines": (
        "docker log lines of the allocator's GC race (key modified, network remove failed)",
        ("window",),
    ),
    "pvcheck_residue_objects": ("objects the run's teardown left behind", ()),
    "pvcheck_check_duration_seconds": ("how long each check of the last run took", ("check",)),
}

_RESIDUE = re.compile(r"^(\d+) left\b")


class _Gauges:
    """Gauges made on their first value, so a figure never set is absent from the text."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.registry = CollectorRegistry(auto_describe=True)
        self._made: dict[str, Gauge] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        doc, names = METRICS[name]
        gauge = self._made.get(name)
        if gauge is None:
            gauge = Gauge(name, doc, ["host", *names], registry=self.registry)
            self._made[name] = gauge
        gauge.labels(host=self.host, **labels).set(value)

    def text(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


def metrics_text(report: Report, cfg: Config) -> str:
    """Pure: the run's gauges in the Prometheus text format."""
    out = _Gauges(cfg.target.name)
    out.set("pvcheck_verdict_pass", float(report.verdict == Verdict.PASS))
    out.set("pvcheck_verdict_incomplete", float(report.verdict == Verdict.INCOMPLETE))
    for gate in report.gates:
        out.set("pvcheck_gate_pass", float(gate.status == Status.PASS), gate=str(gate.gate))
    started, finished = parse_ts(report.started_at), parse_ts(report.finished_at)
    if finished is not None:
        out.set("pvcheck_last_run_timestamp_seconds", finished.timestamp())
        if started is not None:
            seconds = (finished - started).total_seconds()
            out.set("pvcheck_last_run_duration_seconds", seconds)
    network = report.facts_after.network if report.facts_after else None
    if network is not None:
        out.set("pvcheck_network_endpoints", network.used, network=network.name)
        out.set("pvcheck_network_capacity", network.capacity, network=network.name)
        if network.capacity > 0:
            ratio = network.headroom_pct / 100.0
            out.set("pvcheck_network_headroom_ratio", ratio, network=network.name)
    alloc = report.allocator
    if alloc is not None:
        if alloc.engine_leaked is not None:
            out.set("pvcheck_allocator_leaked_addresses", alloc.engine_leaked)
        for forecast in forecasts(alloc):
            if forecast.leak_per_day is None:
                continue  # the leak was not counted: no forecast
            days = forecast.days
            value = math.inf if days is None else days
            out.set("pvcheck_exhaustion_days", value, network=forecast.network)
    for window, scan in (("before", report.logs), ("run", report.run_logs)):
        _log_lines(out, window, scan)
    residue = next((c for c in report.checks if c.id == Family.TEARDOWN.id("residue")), None)
    matched = _RESIDUE.match(residue.found) if residue and residue.status != Status.ERROR else None
    if matched:
        out.set("pvcheck_residue_objects", int(matched.group(1)))
    durations: dict[str, float] = {}
    for check in report.checks:  # a check id met twice (a re-probe) adds up
        durations[check.id] = durations.get(check.id, 0.0) + check.duration_s
    for check_id, seconds in durations.items():
        out.set("pvcheck_check_duration_seconds", seconds, check=check_id)
    return out.text()


def _log_lines(out: _Gauges, window: str, scan: LogScan | None) -> None:
    if scan is None or scan.error is not None:
        return  # not scanned, or unreadable: the counts mean nothing
    if "vip_exhausted" in scan.counts:
        out.set("pvcheck_vip_signature_lines", scan.vip_count, window=window)
    if any(k in scan.counts for k in GC_RACE):
        race = sum(scan.counts.get(k, 0) for k in GC_RACE)
        out.set("pvcheck_gc_race_lines", race, window=window)


def write_textfile(path: Path, text: str) -> None:
    """Replace the .prom file atomically (a temp file beside it, fsync, rename), so the
    collector never reads half a file. Refused: a folder that does not exist, one others
    can write (as root: anything on the way to it that someone else could change), and a
    path that is a symbolic link or not a regular file."""
    folder = path.parent
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        raise StateFileError(
            str(path), f"its folder {folder} does not exist (node_exporter's textfile folder)"
        ) from None
    except OSError as exc:
        raise StateFileError(str(path), f"cannot read its folder: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateFileError(str(path), f"{folder} is not a folder")
    if info.st_mode & 0o002:
        raise StateFileError(
            str(path), f"its folder {folder} is writable by every user; refused (chmod o-w it)"
        )
    require_root_only(folder, "the metrics folder")
    atomic_write(path, text)


def publish(report: Report, cfg: Config) -> Path | None:
    """Write the run's metrics to `metrics.textfile` when set; never raises: a failure is
    logged as a warning (the verdict stands). The path written, or None."""
    path = cfg.metrics.textfile
    if path is None:
        return None
    try:
        write_textfile(path, metrics_text(report, cfg))
    except Exception as exc:
        log.warning("metrics not written to %s: %s", path, exc)
        return None
    log.info("wrote metrics: %s", path)
    return path
