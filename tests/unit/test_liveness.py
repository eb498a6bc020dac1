"""Harness-run liveness by flocks (pvcheck.liveness): /proc/locks parsing against the kernel's
line format, and the probe against a REAL flock held by another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pvcheck.config import ActiveRunsConfig
from pvcheck.deploy.active import active_runs
from pvcheck.liveness import (
    FlockScan,
    HeldLock,
    LockFile,
    busy_flocks,
    device,
    held_locks,
    held_runs,
    parse_listing,
    split_dev,
)
from tests.fakes import FakeHost, FakeSwarm
from tests.helpers import ROOT

RECORD = ROOT / "tests" / "golden" / "record"
CCCI_PATTERN = r"^cc-ci-app-(?P<domain>.+)\.lock$"
HOLD = (
    "import fcntl, sys\n"
    "f = open(sys.argv[1], 'a')\n"
    "fcntl.flock(f, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_held_locks_reads_the_kernel_format_and_skips_waiters_and_leases() -> None:
    held = held_locks((RECORD / "liveness-proc-locks.txt").read_text())
    assert held == {
        ("00:1a", 3107),  # the first run (its waiter adds nothing)
        ("00:1a", 3121),  # the second run
        ("fe:00", 1515551),  # POSIX
        ("00:06", 3),  # OFD
        ("103:02", 524310),  # a major above 255, in hex
    }
    assert ("fe:00", 88012) not in held  # a lease is not a run lock
    assert held_locks("1: -> FLOCK  ADVISORY  WRITE 9 00:1a:77 0 EOF\nnot a line\n") == set()


def test_device_numbers_decode_as_the_kernel_prints_them() -> None:
    for major, minor in [(0, 26), (254, 0), (259, 2), (0, 300), (4095, 1048575)]:
        assert split_dev(os.makedev(major, minor)) == (major, minor)
    assert device(0, 26) == "00:1a" and device(259, 2) == "103:02" and device(0, 300) == "00:12c"


def test_listing_and_matching_name_the_run() -> None:
    dev = os.makedev(0, 26)
    listing = (
        f"{dev} 3107 cc-ci-app-ab12-0f0f0f.ci.commoninternet.net.lock\0"
        f"{dev} 3200 cc-ci-app-stale-000000.ci.commoninternet.net.lock\0"
        f"{dev} 3121 other.lock\0garbage\0"
    )
    files = parse_listing(listing)
    assert files[0] == LockFile("cc-ci-app-ab12-0f0f0f.ci.commoninternet.net.lock", "00:1a", 3107)
    runs = held_runs("/run/lock/", files, {("00:1a", 3107), ("00:1a", 3121)}, CCCI_PATTERN)
    # The stale file is unheld and other.lock does not match: one run.
    assert runs == [
        HeldLock(
            "/run/lock/cc-ci-app-ab12-0f0f0f.ci.commoninternet.net.lock",
            "ab12-0f0f0f.ci.commoninternet.net",
        )
    ]
    assert runs[0].describe().startswith("harness run ab12-0f0f0f.ci.commoninternet.net (flock")
    # Same inode on another device: not the same file.
    assert held_runs("/run/lock", files, {("fe:00", 3107)}, CCCI_PATTERN) == []


def test_a_real_flock_is_seen_without_taking_it_and_is_gone_when_its_holder_exits(
    tmp_path: Path,
) -> None:
    held = tmp_path / "cc-ci-app-ab12-0f0f0f.ci.commoninternet.net.lock"
    stale = tmp_path / "cc-ci-app-cd34-1a1a1a.ci.commoninternet.net.lock"
    stale.write_text("")  # a lock file nobody holds: no run
    host = FakeHost()
    assert busy_flocks(host, str(tmp_path), CCCI_PATTERN) == FlockScan()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        scan = busy_flocks(host, str(tmp_path), CCCI_PATTERN)
        domain = "ab12-0f0f0f.ci.commoninternet.net"
        assert scan == FlockScan([HeldLock(str(held), domain, (child.pid,))])
        assert scan.held[0].describe().endswith(f"{held} by pid {child.pid})")  # who holds it
        # The probe is still not a holder: the lock can be tested by a third party as taken.
        probe = subprocess.run(["flock", "-n", "-x", str(held), "true"], check=False)
        assert probe.returncode == 1
        # Through the stage: the held lock is an active run, the stale one is not.
        cfg = ActiveRunsConfig(lock_folder=tmp_path, lock_pattern=CCCI_PATTERN)
        assert active_runs(cfg, FakeSwarm(), host=host) == [
            f"harness run ab12-0f0f0f.ci.commoninternet.net (flock held on {held} by pid {child.pid})"
        ]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    assert busy_flocks(host, str(tmp_path), CCCI_PATTERN) == FlockScan()
    assert held.exists() and stale.exists()  # left as they were: never opened or removed
    commands = [argv[0] for argv in host.ran]
    assert set(commands) == {"find", "cat"}  # listed and read, nothing else


def test_a_missing_folder_holds_no_run_and_an_unreadable_one_counts_as_busy(
    tmp_path: Path,
) -> None:
    assert busy_flocks(FakeHost(), str(tmp_path / "absent"), CCCI_PATTERN) == FlockScan()

    class Refused:
        def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
            return 1, "", f"find: '{argv[1]}': Permission denied\n"

    scan = busy_flocks(Refused(), "/run/lock", CCCI_PATTERN)
    assert scan.held == [] and scan.problem == "find: '/run/lock': Permission denied"

    class NoLocks:
        def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
            if argv[0] == "find":
                return 0, f"{os.makedev(0, 26)} 3107 cc-ci-app-x.lock\0", ""
            return 1, "", "cat: /proc/locks: No such file or directory\n"

    assert busy_flocks(NoLocks(), "/run/lock", CCCI_PATTERN).problem == (
        "/proc/locks: cat: /proc/locks: No such file or directory"
    )

    class Slow:
        def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
            raise subprocess.TimeoutExpired(argv, timeout_s)

    assert busy_flocks(Slow(), "/run/lock", CCCI_PATTERN).problem == "no answer within 30s"
    found = active_runs(ActiveRunsConfig(lock_folder=Path("/run/lock")), FakeSwarm(), host=Slow())  # type: ignore[arg-type]
    assert found == [
        "/run/lock: run locks cannot be read (no answer within 30s); a run may be active"
    ]


def test_a_listing_cut_at_the_output_cap_counts_as_busy_never_as_quiet() -> None:
    """Attacker's read: /run/lock is open to all; enough long names pushed the harness's
    lock past the cap, run_on returned the cut text with rc 0, and the host read as quiet."""
    from pvcheck.procs import MAX_OUTPUT

    held = f"{os.makedev(0, 26)} 3107 cc-ci-app-real.example.lock\0"
    filler = f"{os.makedev(0, 26)} 1 " + "x" * 200 + ".lock\0"

    class Flooded:
        def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
            if argv[0] == "find":  # what run_on hands back at the cap: the cut text, rc 0
                return 0, (filler * (MAX_OUTPUT // len(filler) + 1))[:MAX_OUTPUT], ""
            return 0, "1: FLOCK  ADVISORY  WRITE 4242 00:1a:3107 0 EOF\n", ""

    scan = busy_flocks(Flooded(), "/run/lock", CCCI_PATTERN)
    assert scan.held == [] and scan.problem is not None and "counts as busy" in scan.problem
    assert held  # the lock the flood hid: never reached, yet the host is not called quiet


def test_a_lock_file_name_cannot_forge_a_log_line() -> None:
    name = "cc-ci-app-x\n2026-12-05 | INFO | host quiet: verdict PASS\x1b[2K.lock"
    shown = HeldLock(f"/run/lock/{name}", "x\n\x1b[2K").describe()
    assert "\n" not in shown and "\x1b" not in shown and "host quiet" in shown


def test_the_holders_of_each_lock_and_a_build_number_from_a_holders_environment() -> None:
    from pvcheck.liveness import lock_holders, parse_build_var

    locks = (
        "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1515551 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 4343 fe:00:1515551 0 EOF\n"  # a waiter holds nothing
        "2: OFDLCK ADVISORY  READ  -1 fe:00:77 0 EOF\n"
    )
    assert lock_holders(locks) == {("fe:00", 1515551): {4242}, ("fe:00", 77): {-1}}
    assert parse_build_var("DRONE_BUILD_NUMBER=608\0") == 608
    # What grep -z might pass on anything else: never a number.
    for said in ("", "DRONE_BUILD_NUMBER=\0", "DRONE_BUILD_NUMBER=6x\0", "OTHER=1\0",
                 "DRONE_BUILD_NUMBER=" + "9" * 13 + "\0"):  # fmt: skip
        assert parse_build_var(said) is None, said


def test_the_run_of_a_build_is_the_one_a_process_of_that_build_holds(tmp_path: Path) -> None:
    """Real flocks held by processes with and without the build's variable, read through the
    host seam (here: this machine): its run is found; a second claimant makes two (the
    driver then takes none); only one grep reads the holders' environments."""
    from pvcheck.liveness import runs_of_build

    def hold(domain: str, build: str | None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "DRONE_BUILD_NUMBER"}
        if build is not None:
            env["DRONE_BUILD_NUMBER"] = build
        lock = tmp_path / f"cc-ci-app-{domain}.lock"
        child = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        return child

    children = [
        hold("mine-0a0a0a.x", "7"),
        hold("other-1b1b1b.x", "8"),
        hold("sweep-2c2c2c.x", None),
    ]
    try:
        host = FakeHost()
        assert runs_of_build(host, str(tmp_path), CCCI_PATTERN, 7) == ["mine-0a0a0a.x"]
        assert runs_of_build(host, str(tmp_path), CCCI_PATTERN, 9) == []
        greps = [argv for argv in host.ran if argv[0] == "grep"]
        assert len(greps) == 2 and all(g[1] == "-azxH" for g in greps)  # one per look
        children.append(hold("fake-3d3d3d.x", "7"))  # anyone can claim build 7
        assert sorted(runs_of_build(host, str(tmp_path), CCCI_PATTERN, 7)) == [
            "fake-3d3d3d.x", "mine-0a0a0a.x"]  # fmt: skip
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)
