"""The docker log seam (journald, a file, or a command) and a pure scanner for the
VIP/IPAM error family.

Lines whose time can be read are kept only inside the window; lines without a readable
time are kept (a journald or command source is already windowed by its own arguments).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pvcheck.config import LogsConfig
from pvcheck.hosts import Host
from pvcheck.records import format_ts

VIP_SIGNATURE = "could not find an available IP while allocating VIP"


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


class LogUnreadable(Exception):
    """The docker log could not be read: a scan of it would prove nothing."""


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

    @property
    def vip_count(self) -> int:
        return self.counts.get("vip_exhausted", 0)


def scan_lines(
    lines: Iterable[str],
    patterns: dict[str, str],
    since: datetime,
    until: datetime,
    max_lines: int,
    source: str,
) -> LogScan:
    """Pure: count each pattern in the window; keep at most max_lines matching lines."""
    counts = dict.fromkeys(patterns, 0)
    kept: list[str] = []
    truncated = False
    for raw in lines:
        hits = [pid for pid, text in patterns.items() if text in raw]
        if not hits:
            continue
        when = line_time(raw)
        if when is not None and not since <= when <= until:
            continue
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
    )


def unread_scan(
    source: str, patterns: dict[str, str], since: datetime, until: datetime, error: str
) -> LogScan:
    """The scan of a log that could not be read: no counts to trust, and why."""
    return LogScan(
        source, format_ts(since), format_ts(until), dict.fromkeys(patterns, 0), error=error
    )


class LogSource(Protocol):
    """Where docker's log lines come from."""

    def describe(self) -> str: ...

    def lines(self, since: datetime, until: datetime) -> Iterator[str]: ...


class FileLogSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file {self.path}"

    def lines(self, since: datetime, until: datetime) -> Iterator[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                yield from fh
        except OSError as exc:
            raise LogUnreadable(f"{self.path}: {exc.strerror or exc}") from None


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
    ) -> None:
        self.argv = argv
        self.label = label
        self.timeout_s = timeout_s
        self.unreadable = unreadable

    def describe(self) -> str:
        return self.label or "command " + " ".join(self.argv)

    def lines(self, since: datetime, until: datetime) -> Iterator[str]:
        fmt = "%Y-%m-%d %H:%M:%S"
        argv = [
            a.replace("{since}", since.strftime(fmt)).replace("{until}", until.strftime(fmt))
            for a in self.argv
        ]
        try:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LogUnreadable(f"{self.describe()}: {exc}") from None
        said = out.stderr.strip().splitlines()
        if out.returncode != 0:
            reason = said[-1] if said else "no message"
            raise LogUnreadable(f"{self.describe()} exited {out.returncode}: {reason}")
        for marker in self.unreadable:
            if marker in out.stderr:
                raise LogUnreadable(f"{self.describe()}: {marker}")
        yield from out.stdout.splitlines()


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


def make_log_source(cfg: LogsConfig, host: Host | None = None) -> LogSource:
    """The docker log: on this machine, or read over ssh on a remote target."""
    remote = host is not None and host.remote
    if cfg.source == "file":
        assert cfg.path is not None  # validated by LogsConfig
        if not remote:
            return FileLogSource(cfg.path)
        source = CommandLogSource(["cat", "--", str(cfg.path)], f"cat {cfg.path}")
    elif cfg.source == "command":
        assert cfg.command is not None
        source = CommandLogSource(cfg.command)
    else:
        source = journald_source(cfg.unit)
    if host is None or not remote:
        return source
    shown = source.label or " ".join(source.argv)
    return CommandLogSource(
        host.argv(source.argv), host.how(shown), source.timeout_s, source.unreadable
    )
