"""Stage logs (M2): no VIP-exhaustion line in the docker log during a window (the run, the
reproduction, the time since a claim). The docker log seam (journald, a file, or a command)
and a pure scanner for the VIP/IPAM error family.

Lines whose time can be read are kept only inside the window; lines without a readable
time are kept (a journald or command source is already windowed by its own arguments).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pvcheck.config import Config, LogsConfig
from pvcheck.errors import StateFileError
from pvcheck.procs import MAX_LINE, LineStream
from pvcheck.records import VIP_SIGNATURE, Check, Gate, Status, format_ts
from pvcheck.safeio import open_regular
from pvcheck.seams import LogSource, LogUnreadable

if TYPE_CHECKING:
    from pvcheck.seams import HostCommands, Seams


# Fixed parts of every pattern of the family: what a grep on the host lets through.
GREP_FRAGMENTS = (
    "available IP while allocating VIP",
    "Failed allocation",
    "remove failed",
    "key modified",
)


def error_family(network: str) -> dict[str, str]:
    """Pattern id -> literal text. Only the VIP line fails a gate; the rest is evidence."""
    return {
        "vip_exhausted": VIP_SIGNATURE,
        "failed_allocation": "Failed allocation",
        "network_remove_failed": f"network {network} remove failed",
        "key_modified": "Unable to complete atomic operation, key modified",
    }


_LOGRUS_TIME = re.compile(r'time="([^"]+)"')
_ISO_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")


def line_time(line: str) -> datetime | None:
    """Time of a dockerd (logrus) or `journalctl -o short-iso` line, if it has one."""
    match = _LOGRUS_TIME.search(line) or _ISO_PREFIX.match(line)
    if not match:
        return None
    text = match.group(1)
    head, dot, rest = text.partition(".")
    if dot:  # trim nanoseconds to microseconds, keep the zone
        digits = re.match(r"\d+", rest)
        frac = digits.group(0) if digits else ""
        text = f"{head}.{frac[:6]}{rest[len(frac) :]}"
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LogScan:
    """Counts per pattern id within [since, until], and the matching lines (bounded).
    `error` says why the log could not be read; the counts are then meaningless."""

    source: str
    since: str
    until: str
    counts: dict[str, int]
    lines: list[str] = field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    # pvcheck's own capacity-probe services whose VIP lines are in the window (counted as
    # PROBE); the M2 HOW line and the review leave exactly these out.
    probe_ids: list[str] = field(default_factory=list)

    @property
    def vip_count(self) -> int:
        return self.counts.get("vip_exhausted", 0)


# GC-race lines: the allocator lost track of an address while a network went away
# (moby/moby#37338); evidence of the leak, a failure only past `allocator.gc_race_fail`.
GC_RACE = ("network_remove_failed", "key_modified")
# VIP lines naming one of pvcheck's own capacity-probe services: the probe met a refusal on
# its scratch network (or ingress), which is the measurement, not the host's incident.
PROBE = "vip_probe"


# How an operator reads each count (the pattern ids are the report's keys).
SHOWN = {
    "vip_exhausted": "VIP-exhaustion",
    PROBE: "capacity-probe VIP",
    "failed_allocation": "failed-allocation",
    "network_remove_failed": "network-remove-failed",
    "key_modified": "key-modified",
}


def summary(scan: LogScan, what: str) -> str:
    """Pure: one line saying what the docker log held during a window, in words: the VIP
    line first (the one that fails a gate), the GC-race lines as one figure with its parts."""
    if scan.error:
        return f"docker log not read for {what} ({scan.since} -> {scan.until}): {scan.error}"
    counts = scan.counts
    gc = sum(counts.get(k, 0) for k in GC_RACE)
    parts = [f"{counts.get('vip_exhausted', 0)} VIP-exhaustion line(s)"]
    if PROBE in counts:
        parts.append(f"{counts[PROBE]} {SHOWN[PROBE]} line(s) of pvcheck's own probe")
    parts.append(
        f"{gc} GC-race line(s) ("
        + ", ".join(f"{counts.get(k, 0)} {SHOWN[k]}" for k in GC_RACE)
        + ")"
    )
    parts.append(f"{counts.get('failed_allocation', 0)} {SHOWN['failed_allocation']} line(s)")
    shown = "" if not scan.lines else f"; {len(scan.lines)} matching line(s) at DEBUG"
    return f"docker log during {what} ({scan.since} -> {scan.until}): {'; '.join(parts)}{shown}"


def scan_lines(
    lines: Iterable[str],
    patterns: dict[str, str],
    since: datetime,
    until: datetime,
    max_lines: int,
    source: str,
    ours: tuple[str, ...] = (),
) -> LogScan:
    """Pure: count each pattern in the window; keep at most max_lines matching lines. A VIP
    line naming a service in `ours` counts as the probe's (PROBE), not as the signature."""
    counts = dict.fromkeys(patterns, 0)
    if ours:
        counts[PROBE] = 0
    named: set[str] = set()
    kept: list[str] = []
    truncated = False
    for raw in lines:
        hits = [pid for pid, text in patterns.items() if text in raw]
        if not hits:
            continue
        when = line_time(raw)
        if when is not None and not since <= when <= until:
            continue
        mine = [sid for sid in ours if sid in raw] if "vip_exhausted" in hits else []
        if mine:
            named.update(mine)
            hits = [PROBE if h == "vip_exhausted" else h for h in hits]
        for pid in hits:
            counts[pid] += 1
        if len(kept) < max_lines:
            kept.append(raw.rstrip("\n")[:2000])
        else:
            truncated = True
    return LogScan(
        source=source,
        since=format_ts(since),
        until=format_ts(until),
        counts=counts,
        lines=kept,
        truncated=truncated,
        probe_ids=sorted(named),
    )


def unread_scan(
    source: str, patterns: dict[str, str], since: datetime, until: datetime, error: str
) -> LogScan:
    """The scan of a log that could not be read: no counts to trust, and why."""
    return LogScan(
        source, format_ts(since), format_ts(until), dict.fromkeys(patterns, 0), error=error
    )


class FileLogSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file {self.path}"

    def lines(self, since: datetime, until: datetime) -> Iterator[str]:
        try:
            fd = open_regular(self.path, os.O_RDONLY, follow=True)  # never a FIFO
        except StateFileError as exc:
            raise LogUnreadable(str(exc)) from None
        except OSError as exc:
            raise LogUnreadable(f"{self.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            while line := fh.readline(MAX_LINE):  # a line without an end is read in pieces
                yield line.decode("utf-8", errors="replace")


class CommandLogSource:
    """Runs an argument list (never a shell); {since}/{until} in arguments become UTC times.

    A non-zero exit, a timeout, or a line of `unreadable` on stderr means the log was not
    read (an empty answer would otherwise pass as "no errors").
    """

    def __init__(
        self,
        argv: list[str],
        label: str | None = None,
        timeout_s: float = 120,
        unreadable: tuple[str, ...] = (),
        ok_codes: tuple[int, ...] = (0,),
    ) -> None:
        self.argv = argv
        self.label = label
        self.timeout_s = timeout_s
        self.unreadable = unreadable
        self.ok_codes = ok_codes  # grep exits 1 when nothing matched: still a clean read

    def describe(self) -> str:
        return self.label or "command " + " ".join(self.argv)

    def lines(self, since: datetime, until: datetime) -> Iterator[str]:
        fmt = "%Y-%m-%d %H:%M:%S"
        argv = [
            a.replace("{since}", since.strftime(fmt)).replace("{until}", until.strftime(fmt))
            for a in self.argv
        ]
        # Streamed: a log of hundreds of MB is scanned line by line, never held whole.
        stream = LineStream(argv, self.timeout_s)
        try:
            for line in stream:
                yield line.rstrip("\n")
        except OSError as exc:
            raise LogUnreadable(f"{self.describe()}: {exc}") from None
        stderr = stream.stderr.decode("utf-8", errors="replace")
        said = stderr.strip().splitlines()
        if stream.rc is None:
            raise LogUnreadable(f"{self.describe()}: timed out after {self.timeout_s:g}s")
        if stream.rc not in self.ok_codes:
            reason = said[-1] if said else "no message"
            raise LogUnreadable(f"{self.describe()} exited {stream.rc}: {reason}")
        for marker in self.unreadable:
            if marker in stderr:
                raise LogUnreadable(f"{self.describe()}: {marker}")


def journald_source(unit: str) -> CommandLogSource:
    argv = [
        "journalctl",
        "-u",
        unit,
        "--since",
        "{since} UTC",
        "--until",
        "{until} UTC",
        "-o",
        "short-iso",
        "--no-pager",
    ]
    # Not -q: without it, journalctl says so on stderr when the host keeps no journal at all
    # (and still exits 0 with nothing to show).
    return CommandLogSource(
        argv, label=f"journalctl -u {unit}", unreadable=("No journal files were found",)
    )


def make_log_source(cfg: LogsConfig, host: HostCommands | None = None) -> LogSource:
    """The docker log: on this machine, or read over ssh on a remote target."""
    remote = host is not None and host.remote
    if cfg.source == "file":
        assert cfg.path is not None  # validated by LogsConfig
        if not remote:
            return FileLogSource(cfg.path)
        # On the host only the lines of the error family leave it, not the whole log.
        grep = ["grep", "-F", *(a for f in GREP_FRAGMENTS for a in ("-e", f)), "--", str(cfg.path)]
        source = CommandLogSource(grep, f"grep -F … {cfg.path}", ok_codes=(0, 1))
    elif cfg.source == "command":
        assert cfg.command is not None
        source = CommandLogSource(cfg.command)
    else:
        source = journald_source(cfg.unit)
    if host is None or not remote:
        return source
    shown = source.label or " ".join(source.argv)
    return CommandLogSource(
        host.argv(source.argv), host.how(shown), source.timeout_s, source.unreadable,
        source.ok_codes,
    )  # fmt: skip


# --- the stage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """One log window to scan, and the check it becomes."""

    check_id: str  # logs.fresh-run, logs.fresh-allocator, logs.after-builder
    what: str  # "this run", "the reproduction", ...
    since: datetime
    until: datetime
    network: str
    max_lines: int
    ours: tuple[str, ...] = ()  # every probe service the run created (their VIP lines)
    gc_race_fail: int | None = None  # GC-race lines from which the window fails
    judge_gc: bool = False  # this window's GC-race lines are a check (the run's own)

    @classmethod
    def window(
        cls,
        cfg: Config,
        check_id: str,
        what: str,
        since: datetime,
        until: datetime,
        ours: tuple[str, ...] = (),
        judge_gc: bool = False,
    ) -> Settings:
        # A window never runs backwards (a clock or a claim time).
        return cls(
            check_id,
            what,
            min(since, until),
            until,
            cfg.network.name,
            cfg.logs.max_lines,
            ours,
            cfg.allocator.gc_race_fail,
            judge_gc,
        )


@dataclass(frozen=True)
class Observation:
    scan: LogScan
    seconds: float


def gather(seams: Seams, settings: Settings) -> Observation:
    import time

    t0 = time.monotonic()
    source, patterns = seams.logs, error_family(settings.network)
    try:
        scan = scan_lines(
            source.lines(settings.since, settings.until),
            patterns,
            settings.since,
            settings.until,
            settings.max_lines,
            source.describe(),
            settings.ours,
        )
    except LogUnreadable as exc:
        scan = unread_scan(source.describe(), patterns, settings.since, settings.until, str(exc))
    return Observation(scan, time.monotonic() - t0)


def judge(obs: Observation, settings: Settings) -> list[Check]:
    checks = [fresh_logs(settings.check_id, obs.scan, settings.what, obs.seconds)]
    if settings.judge_gc and not obs.scan.error:
        checks.append(gc_race(obs.scan, settings.what, settings.gc_race_fail, obs.seconds))
    return checks


def gc_race(scan: LogScan, window: str, fail_at: int | None, seconds: float = 0.0) -> Check:
    """GC-race lines in the window: counted and shown (a warning), a failure from `fail_at`
    on. They mark addresses the allocator may never get back."""
    count = sum(scan.counts.get(k, 0) for k in GC_RACE)
    detail = ", ".join(f"{k} {scan.counts.get(k, 0)}" for k in GC_RACE)
    failed = fail_at is not None and count >= fail_at
    limit = "no limit set (allocator.gc_race_fail)" if fail_at is None else f"fails at {fail_at}"
    return Check(
        "logs.gc-race",
        Gate.M2,
        Status.FAIL if failed else Status.PASS,
        f"GC-race lines during {window} counted; {limit}",
        f"{count} GC-race line(s) ({detail})" + (": warning" if count and not failed else ""),
        "lines where the allocator lost track of an address as a network went away "
        "(moby/moby#37338): each may be an address never released",
        seconds,
    )


def fresh_logs(check_id: str, scan: LogScan, window: str, seconds: float = 0.0) -> Check:
    """The VIP line fails its gate; the rest of the family is reported as evidence. A log
    that could not be read is an error: it proves nothing either way."""
    expected = f"no '{VIP_SIGNATURE}' in the docker log during {window}"
    if scan.error:
        return Check(
            check_id,
            Gate.M2,
            Status.ERROR,
            expected,
            f"docker log not read ({scan.since} -> {scan.until})",
            f"source {scan.source}: {scan.error}",
            seconds,
        )
    others = ", ".join(
        f"{k} {v}" for k, v in scan.counts.items() if k not in ("vip_exhausted", PROBE)
    )
    if scan.counts.get(PROBE):
        others += f"; {scan.counts[PROBE]} VIP line(s) of pvcheck's own capacity probe"
    return Check(
        check_id,
        Gate.M2,
        Status.FAIL if scan.vip_count else Status.PASS,
        expected,
        f"{scan.vip_count} VIP lines ({scan.since} -> {scan.until}); {others}",
        f"source {scan.source}"
        + (f"; first: {scan.lines[0][:300]}" if scan.vip_count and scan.lines else ""),
        seconds,
    )
