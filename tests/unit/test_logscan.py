"""The docker-log scanner: window, counts, bounded line list, and the sources."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pvcheck.logscan import (
    CommandLogSource,
    FileLogSource,
    error_family,
    fresh_logs,
    line_time,
    scan_lines,
    unread_scan,
)
from pvcheck.records import VIP_SIGNATURE, Status
from pvcheck.seams import LogUnreadable

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


@pytest.mark.faults
@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (FileLogSource(Path("/nonexistent/dockerd.log")), "No such file or directory"),
        (CommandLogSource([sys.executable, "-c", "raise SystemExit('gone')"]), "exited 1: gone"),
        (CommandLogSource(["/nonexistent/journalctl"]), "No such file"),
        (
            CommandLogSource([sys.executable, "-c", "import time; time.sleep(5)"], None, 0.2),
            "timed out",
        ),
        # journalctl on a host without a journal: exit 0, nothing on stdout, a line on stderr.
        (
            CommandLogSource(
                [
                    sys.executable,
                    "-c",
                    "import sys; print('No journal files were found.', file=sys.stderr)",
                ],
                unreadable=("No journal files were found",),
            ),
            "No journal files were found",
        ),
    ],
    ids=["missing-file", "command-fails", "command-missing", "command-hangs", "no-journal"],
)
def test_an_unreadable_log_is_an_error_not_a_clean_log(source: Any, reason: str) -> None:
    with pytest.raises(LogUnreadable, match=reason):
        list(source.lines(SINCE, UNTIL))
    patterns = error_family("proxy")
    scan = unread_scan(source.describe(), patterns, SINCE, UNTIL, "it is gone")
    check = fresh_logs("logs.fresh-run", scan, "this run")
    assert check.status == Status.ERROR and check.detail.endswith(": it is gone")


def test_command_source_runs_an_argument_list_with_window(tmp_path: Path) -> None:
    src = CommandLogSource(
        [sys.executable, "-c", "import sys; print(sys.argv[1:])", "{since}", "; rm -rf /"]
    )
    out = list(src.lines(SINCE, UNTIL))
    assert out == ["['2026-11-26 00:00:00', '; rm -rf /']"]  # no shell: metacharacters stay text
