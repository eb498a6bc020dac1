"""Pure parts of M2: the guard parser, the allocator judgement, run bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pvcheck import logscan
from pvcheck.allocator import AllocatorResult, RoundFigures, judge_allocator, refusal
from pvcheck.capacity import HeldCount
from pvcheck.config import AllocatorConfig, GuardConfig
from pvcheck.errors import HostBusy
from pvcheck.guard import find_detection, find_section, pipelines
from pvcheck.hostfacts import NetworkFacts
from pvcheck.logscan import LogScan
from pvcheck.records import Check, Status
from pvcheck.runs import HostLock, RunRegistry
from tests.helpers import ROOT, check_guard, held_in_another_process

GUARD = ROOT / "lab" / "upgrade-all" / "SKILL.md"
# The real /upgrade-all layout: one fenced bash block, numbered comment steps, the detection
# nested in `vip=$(ssh cc-ci '…')` and the restart inside an `if` on that count.
REAL_GUARD = ROOT / "lab" / "cc-ci-twin" / "upgrade-all" / "SKILL.md"
SIGNATURE = "could not find an available IP while allocating VIP"


def _statuses(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.id: str(c.status) for c in checks}


def test_lab_guard_file_passes() -> None:
    checks, argv = check_guard(GuardConfig(file=GUARD))
    assert _statuses(checks) == {
        "guard.section": "pass",
        "guard.detects": "pass",
        "guard.recovery": "pass",
    }
    assert argv == ["grep", "-c", "available IP while allocating VIP"]


def _copy_without(tmp_path: Path, needle: str) -> Path:
    path = tmp_path / "SKILL.md"
    path.write_text("\n".join(x for x in GUARD.read_text().splitlines() if needle not in x) + "\n")
    return path


def test_guard_without_detection_fails(tmp_path: Path) -> None:
    checks, _ = check_guard(GuardConfig(file=_copy_without(tmp_path, "allocating VIP")))
    assert _statuses(checks)["guard.detects"] == "fail"


def test_guard_without_recovery_fails(tmp_path: Path) -> None:
    checks, _ = check_guard(GuardConfig(file=_copy_without(tmp_path, "restart docker")))
    assert _statuses(checks)["guard.recovery"] == "fail"


def test_guard_whose_grep_would_never_match_fails(tmp_path: Path) -> None:
    path = tmp_path / "SKILL.md"
    path.write_text(GUARD.read_text().replace('grep -c "available IP', 'grep -c "availabel IP'))
    checks, _ = check_guard(GuardConfig(file=path))
    assert _statuses(checks)["guard.detects"] == "fail"


def test_guard_missing_file_or_section(tmp_path: Path) -> None:
    assert _statuses(check_guard(GuardConfig(file=tmp_path / "none.md"))[0]) == {
        "guard.section": "fail"
    }
    assert _statuses(check_guard(GuardConfig(file=GUARD, section="7"))[0]) == {
        "guard.section": "fail"
    }


def test_configured_detect_command_is_used() -> None:
    cmd = [sys.executable, "-c", "import sys; print(sum('allocating VIP' in l for l in sys.stdin))"]
    checks, argv = check_guard(GuardConfig(file=GUARD, detect_command=cmd))
    assert argv == cmd and _statuses(checks)["guard.detects"] == "pass"


def test_section_parsing_and_grep_extraction() -> None:
    text = (
        '# T\n## Step 0 — guard\n```sh\nx | grep -c "while allocating VIP"\n```\n### sub\n'
        "restart docker\n## 1. next\nrestart docker\n"
    )
    section = find_section(text, "0")
    assert section is not None and section.heading == "Step 0 — guard" and section.line == 2
    assert "### sub" in section.text and "## 1. next" not in section.text
    detection = find_detection(section, SIGNATURE)
    assert detection is not None and detection.grep == ["grep", "-c", "while allocating VIP"]
    assert pipelines("journalctl -u docker | grep -c 'x y'") == [
        [["journalctl", "-u", "docker"], ["grep", "-c", "x y"]]
    ]


def _real_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = REAL_GUARD.read_text()
    assert old in text
    path = tmp_path / "SKILL.md"
    path.write_text(text.replace(old, new))
    return path


def test_guard_on_the_real_step0_layout_passes() -> None:
    checks, argv = check_guard(GuardConfig(file=REAL_GUARD))
    assert _statuses(checks) == {
        "guard.section": "pass",
        "guard.detects": "pass",
        "guard.recovery": "pass",
    }
    by_id = {c.id: c for c in checks}
    assert by_id["guard.section"].found == "line 11: Step 0 — allocator guard"
    assert argv == ["grep", "-c", "available IP while allocating VIP"]
    assert by_id["guard.detects"].detail == (
        "detection: journalctl -u docker --since '26 hours ago' | "
        "grep -c 'available IP while allocating VIP'"
    )
    assert by_id["guard.recovery"].found == "ssh cc-ci 'systemctl restart docker'"


def test_numbered_comments_in_the_code_are_not_headings() -> None:
    text = REAL_GUARD.read_text()
    section = find_section(text, "1")
    assert section is not None and section.heading == "Step 1 — upgrade the recipes"
    step0 = find_section(text, "0")
    assert step0 is not None and "# 3. check the allocator" in step0.text


def test_real_layout_with_a_typo_in_the_grep_pattern_fails(tmp_path: Path) -> None:
    path = _real_variant(tmp_path, 'grep -c "available IP while', 'grep -c "available IP whilst')
    checks, argv = check_guard(GuardConfig(file=path))
    assert _statuses(checks)["guard.detects"] == "fail" and argv is None


@pytest.mark.parametrize(
    "restart",
    [
        "# ssh cc-ci 'systemctl restart docker'",
        'echo "now run: systemctl restart docker"',
        "printf 'ssh cc-ci systemctl restart docker\\n'",
        "echo ssh cc-ci 'systemctl restart docker'",
    ],
)
def test_real_layout_whose_restart_is_not_executable_fails(tmp_path: Path, restart: str) -> None:
    path = _real_variant(tmp_path, "  ssh cc-ci 'systemctl restart docker'", f"  {restart}")
    checks, _ = check_guard(GuardConfig(file=path))
    statuses = _statuses(checks)
    assert statuses["guard.recovery"] == "fail", restart
    assert statuses["guard.detects"] == "pass"


def test_restart_in_prose_does_not_count(tmp_path: Path) -> None:
    text = "## 0. guard\n\nIf the count is high, restart docker (systemctl restart docker).\n"
    path = tmp_path / "SKILL.md"
    path.write_text(text)
    assert _statuses(check_guard(GuardConfig(file=path))[0])["guard.recovery"] == "fail"


def test_restart_forms_that_count() -> None:
    from pvcheck.guard import GuardSection, find_recovery

    for line in (
        "sudo systemctl restart docker.service",
        "ssh -p 2222 -o BatchMode=yes root@cc-ci 'sudo systemctl restart docker'",
        "[ $n -gt 0 ] && service docker restart",
    ):
        section = GuardSection("0", 1, f"```\n{line}\n```")
        assert find_recovery(section) == line, line


def _round(baseline: int, peak: int, after: int, allocated: bool = True) -> RoundFigures:
    def counts(n: int) -> dict[str, int]:
        return {"vips": n, "task_ips": 0, "lb_endpoints": 0, "containers": 0}

    leaked = max(0, after - baseline)
    return RoundFigures(
        1, 5, counts(baseline), counts(peak), counts(after), allocated, not leaked, 3.0, leaked
    )


def _result(
    before: int, after: int, rounds: list[RoundFigures], capacity: int = 65533
) -> AllocatorResult:
    now = datetime.now(UTC)
    return AllocatorResult("proxy", capacity, before, after, now, now, rounds)


def test_allocator_judgement_tolerance_and_projection() -> None:
    cfg = AllocatorConfig(leak_tolerance=2, headroom_floor_pct=50)
    clean = _statuses(judge_allocator(_result(11, 11, [_round(11, 21, 11)]), cfg))
    assert clean == {
        "alloc.allocated": "pass",
        "alloc.leak": "pass",
        "alloc.networks": "pass",
        "alloc.headroom": "pass",
        "alloc.forecast": "pass",
    }

    def leaving(held: int) -> list[Check]:
        # The engine's count on the shared network rose by `held` with no endpoint behind it.
        res = _result(11, 11, [_round(11, 21, 11)])
        res.shared_before = HeldCount("proxy", 65533, 11, 65522, True, "ipam-status")
        res.shared_after = HeldCount("proxy", 65533, 11, 65522 - held, True, "ipam-status")
        return judge_allocator(res, cfg)

    leak = next(c for c in leaving(3) if c.id == "alloc.leak")
    assert leak.status == Status.FAIL and leak.found.startswith("proxy: 3 address(es) left")
    small = next(c for c in leaving(1) if c.id == "alloc.leak")
    assert small.status == Status.PASS and small.found.startswith("proxy: 1 address(es) left")
    stuck = _statuses(judge_allocator(_result(11, 11, [_round(11, 15, 11, allocated=False)]), cfg))
    assert stuck["alloc.allocated"] == "fail"


@pytest.mark.faults
def test_refusal_below_headroom_floor() -> None:
    cfg = AllocatorConfig(headroom_floor_pct=50)
    tight = NetworkFacts("proxy", "10.0.1.0/24", "overlay", 253, 100, 100, 1, 0)
    assert refusal(cfg, tight) is not None and "below the floor" in (refusal(cfg, tight) or "")
    roomy = NetworkFacts("proxy", "10.10.0.0/16", "overlay", 65533, 100, 100, 1, 0)
    assert refusal(cfg, roomy) is None and refusal(cfg, None) is not None


def test_fresh_logs_fail_only_on_the_vip_line() -> None:
    quiet = LogScan("f", "a", "b", {"vip_exhausted": 0, "key_modified": 3})
    assert logscan.fresh_logs("logs.fresh-run", quiet, "this run").status == Status.PASS
    loud = LogScan("f", "a", "b", {"vip_exhausted": 1}, ["... could not find an available IP ..."])
    check = logscan.fresh_logs("logs.fresh-run", loud, "this run")
    assert check.status == Status.FAIL and "first:" in check.detail


@pytest.mark.faults
def test_registry_tells_dead_runs_from_live_ones(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path, "unix:///var/run/docker.sock")
    me = registry.start("pv-20261128000000-aaaaaa")
    assert me.engine == "unix:///var/run/docker.sock"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead_id = "pv-20261128000001-dddddd"
    dead = me.__class__(dead_id, proc.pid, "1", me.host, me.started_at, me.engine)
    (registry.dir / f"{dead_id}.json").write_text(json.dumps(dead.__dict__))
    (registry.dir / "pv-torn.json").write_text("{not json")
    assert [r.run_id for r in registry.stale()] == [dead_id]
    registry.finish(dead_id)
    assert [r.run_id for r in registry.records()] == [me.run_id]


@pytest.mark.faults
@pytest.mark.parametrize("run_id", ["", "pv-*", "x", "pv-20261128000001-dddddd"])
def test_a_planted_record_with_an_odd_run_id_is_never_a_dead_run(
    tmp_path: Path, run_id: str
) -> None:
    # The janitor sweeps by `pvcheck.run=<id>`: an empty id would match every pvcheck run.
    registry = RunRegistry(tmp_path, "unix:///var/run/docker.sock")
    registry.dir.mkdir(parents=True)
    planted = {
        "run_id": run_id,
        "pid": 1,
        "proc_start": "0",
        "host": __import__("socket").gethostname(),
        "started_at": "x",
    }
    name = "pv-20261128000009-ffffff.json"  # never the id it claims, or an odd id
    (registry.dir / name).write_text(json.dumps(planted))
    assert registry.records() == []


def test_lock_and_registry_belong_to_the_engine_not_the_name() -> None:
    from pvcheck.runs import engine_key

    assert engine_key("ssh://root@cc-ci") == engine_key("ssh://root@cc-ci:22/")
    assert engine_key("ssh://root@cc-ci:22") != engine_key("ssh://root@cc-ci:2222")
    assert engine_key("unix:///srv/none/docker.sock") == "unix_srv_none_docker.sock"
    assert "/" not in engine_key("tcp://../../etc:1") and ".." in engine_key("tcp://../../etc:1")


@pytest.mark.faults
def test_host_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    held = held_in_another_process(
        "from pvcheck.runs import HostLock",
        "HostLock(Path(sys.argv[1]), 'ssh://root@cc-ci')",
        tmp_path,
    )
    busy = pytest.raises(
        HostBusy, match=r"another pvcheck run holds this host: a run, pid \d+ .*cc-ci_22\.lock\)"
    )
    # The same engine under another spelling is the same lock.
    with held, busy, HostLock(tmp_path, "ssh://root@cc-ci:22"):
        pass
    with HostLock(tmp_path, "ssh://root@cc-ci"):  # the kernel released the dead holder's lock
        pass


@pytest.mark.faults
@pytest.mark.parametrize(
    "grep",
    [
        'grep -c -e "available IP while allocating VIP" -f /dev/zero',
        'grep -o -b -e "allocating VIP" -e X /var/lib/pvcheck/prefect-api-auth',
        'grep -c "allocating VIP" /etc/shadow',
        'grep -r "allocating VIP"',
    ],
)
def test_a_grep_that_reads_files_or_prints_what_it_read_is_never_run(
    tmp_path: Path, grep: str
) -> None:
    path = tmp_path / "SKILL.md"
    path.write_text(f"## 0. guard\n\n```sh\njournalctl -u docker | {grep}\n```\n")
    checks, argv = check_guard(GuardConfig(file=path))
    assert argv is None and _statuses(checks)["guard.detects"] == "fail"


def test_a_restart_inside_a_here_document_is_text_not_a_command(tmp_path: Path) -> None:
    path = tmp_path / "SKILL.md"
    path.write_text(
        "## 0. guard\n\n```sh\njournalctl -u docker | grep -c 'allocating VIP'\n"
        "cat <<'EOF'\nsystemctl restart docker\nEOF\n```\n"
    )
    assert _statuses(check_guard(GuardConfig(file=path))[0])["guard.recovery"] == "fail"
