"""The docker-log scanner: window, counts, bounded line list, and the sources."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from pvcheck.logscan import (
    VIP_SIGNATURE,
    CommandLogSource,
    FileLogSource,
    error_family,
    line_time,
    scan_lines,
)

SINCE = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
UNTIL = datetime(2026, 11, 26, 23, 0, tzinfo=UTC)


def logrus(ts: str, msg: str) -> str:
    return f'time="{ts}" level=error msg="{msg}"'


def test_line_time_reads_logrus_and_journal_formats() -> None:
    assert line_time(logrus("2026-11-26T10:00:00.123456789Z", "x")) == datetime(
        2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC
    )
    assert line_time("2026-11-26T10:00:00+0000 host dockerd[1]: x") == datetime(
        2026, 11, 26, 10, 0, tzinfo=UTC
    )
    assert line_time("no time here") is None


def test_scan_counts_in_window_only_and_bounds_lines() -> None:
    lines = [
        logrus(
            "2026-11-25T23:59:59Z", f"Failed allocation for service a {VIP_SIGNATURE}"
        ),  # before
        logrus("2026-11-26T01:00:00Z", f"Failed allocation for service b error={VIP_SIGNATURE}"),
        logrus("2026-11-26T02:00:00Z", "network proxy remove failed: key modified"),
        logrus("2026-11-26T03:00:00Z", "Unable to complete atomic operation, key modified"),
        logrus("2026-11-26T04:00:00Z", "all fine"),
        f"undated line with {VIP_SIGNATURE}",
    ]
    scan = scan_lines(lines, error_family("proxy"), SINCE, UNTIL, max_lines=2, source="test")
    assert scan.counts == {
        "vip_exhausted": 2,
        "failed_allocation": 1,
        "network_remove_failed": 1,
        "key_modified": 1,
    }
    assert scan.vip_count == 2
    assert len(scan.lines) == 2 and scan.truncated


def test_family_names_the_configured_network() -> None:
    assert error_family("edge")["network_remove_failed"] == "network edge remove failed"


def test_file_source_missing_file_yields_nothing(tmp_path: Path) -> None:
    assert list(FileLogSource(tmp_path / "none.log").lines(SINCE, UNTIL)) == []


def test_command_source_runs_an_argument_list_with_window(tmp_path: Path) -> None:
    src = CommandLogSource(
        [sys.executable, "-c", "import sys; print(sys.argv[1:])", "{since}", "; rm -rf /"]
    )
    out = list(src.lines(SINCE, UNTIL))
    assert out == ["['2026-11-26 00:00:00', '; rm -rf /']"]  # no shell: metacharacters stay text
