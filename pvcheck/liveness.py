"""Harness-run liveness from the kernel's flock table: a run lock that some process holds.

Since cc-ci's harness commit b302f3a (2026-06-10) a live recipe run holds an exclusive flock
on `/run/lock/cc-ci-app-<domain>.lock` for its whole life; the kernel drops it when the
process dies however it dies, so a lock file nobody holds (a stale one, left by a crash or
a janitor that has not run yet) is no run, and after a reboot /run/lock (tmpfs) is empty.
Sources: https://git.autonomic.zone/recipe-maintainers/cc-ci/commit/b302f3ab635c82dba9f2e60f3a6e964921ea07e4
(acquire_app_lock, the flock-probe janitor, the unlink/recreate inode guard) and docs/concurrency.md
at commit 369f4f486b58b8cd253be17fe7ebcfca0ae7ac79 ("held lock = live owner").

pvcheck probes without taking a lock (its own probe would block a starting run, or win an
orphan's lock): it lists the lock files with their device and inode (`find -printf`) and
matches them against /proc/locks, both read on the host through the host seam, so the same
code works here and over ssh. /proc/locks prints `MAJ:MIN:INODE` with major and minor in
hex and the inode in decimal (fs/locks.c, lock_get_status); a blocked waiter's line carries
`->` and holds nothing. A file unlinked and recreated between the two reads shows a new
inode: the run that holds the old one is found on the next poll.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from pvcheck.procs import MAX_OUTPUT, PLAIN_ENV, printable, run_bounded

# The lock kinds a process holds on a file; leases and delegations are not run locks.
_KINDS = ("FLOCK", "POSIX", "OFDLCK")
_LOCK_LINE = re.compile(
    r"^\s*\d+:\s+(?P<waiter>->\s+)?(?P<kind>[A-Z]+)\s+\S+\s+\S+\s+(?P<pid>-?\d+)\s+"
    r"(?P<major>[0-9a-fA-F]+):(?P<minor>[0-9a-fA-F]+):(?P<inode>\d+)\s"
)
TIMEOUT_S = 30.0

DeviceInode = tuple[str, int]  # ("fe:00", 1515551): the device as the kernel prints it


class CommandRunner(Protocol):
    """What runs a command on a machine: the host seam (pvcheck.seams.HostCommands), or Here."""

    def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]: ...


class Here:
    """Commands on the machine pvcheck runs on (without pvcheck's environment)."""

    def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
        done = run_bounded(argv, timeout_s, env=PLAIN_ENV)
        if done.rc is None:
            raise subprocess.TimeoutExpired(argv, timeout_s)
        return done.rc, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def device(major: int, minor: int) -> str:
    """A device as /proc/locks prints it (`%02x:%02x`)."""
    return f"{major:02x}:{minor:02x}"


def split_dev(st_dev: int) -> tuple[int, int]:
    """Pure: Linux's dev_t as (major, minor), the encoding glibc's major()/minor() undo, so a
    number stat printed on another machine decodes the same here."""
    major = ((st_dev >> 8) & 0xFFF) | ((st_dev >> 32) & ~0xFFF)
    minor = (st_dev & 0xFF) | ((st_dev >> 12) & ~0xFF)
    return major, minor


def held_locks(proc_locks: str) -> set[DeviceInode]:
    """Pure: the (device, inode) of every file some process holds a FLOCK, POSIX or OFD lock
    on; blocked waiters (`->`) hold nothing, other lines are ignored."""
    return set(lock_holders(proc_locks))


def lock_holders(proc_locks: str) -> dict[DeviceInode, set[int]]:
    """Pure: (device, inode) -> the pids /proc/locks names as holding a lock on it (an OFD
    lock's is -1: no process)."""
    held: dict[DeviceInode, set[int]] = {}
    for line in proc_locks.splitlines():
        found = _LOCK_LINE.match(line)
        if found is None or found["waiter"] or found["kind"] not in _KINDS:
            continue
        dev = device(int(found["major"], 16), int(found["minor"], 16))
        held.setdefault((dev, int(found["inode"])), set()).add(int(found["pid"]))
    return held


# Drone sets it in every step's environment (docs.drone.io, pipeline environment reference);
# cc-ci's harness runs in its one step and holds its app's flock for its life (b302f3a).
BUILD_VAR = "DRONE_BUILD_NUMBER"


def parse_build_var(text: str) -> int | None:
    """Pure: the build number of `grep -azx 'DRONE_BUILD_NUMBER=[0-9]*' /proc/PID/environ`."""
    for record in text.split("\0"):
        found = re.fullmatch(rf"{BUILD_VAR}=([0-9]{{1,12}})", record.strip())
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class LockFile:
    name: str
    device: str
    inode: int


def parse_listing(text: str) -> list[LockFile]:
    """Pure: `find DIR -mindepth 1 -maxdepth 1 -type f -printf '%D %i %f\\0'` output."""
    files = []
    for entry in text.split("\0"):
        dev, _, rest = entry.partition(" ")
        inode, _, name = rest.partition(" ")
        if not (dev.isdigit() and inode.isdigit() and name):
            continue
        files.append(LockFile(name, device(*split_dev(int(dev))), int(inode)))
    return files


@dataclass(frozen=True)
class HeldLock:
    """A run lock some process holds: the run it names."""

    path: str
    run: str  # the pattern's `domain` group (or first group), else the file name
    holders: tuple[int, ...] = ()  # the pids /proc/locks names (on the host)

    def describe(self) -> str:
        # Names come from a folder others can write (/run/lock is 1777): one printable line.
        # The holder's pid tells a harness run from anyone holding a file there to block runs.
        pids = [str(p) for p in self.holders if p > 0]
        by = f" by pid {', '.join(pids)}" if pids else ""
        return printable(f"harness run {self.run} (flock held on {self.path}{by})")


@dataclass(frozen=True)
class FlockScan:
    held: list[HeldLock] = field(default_factory=list)
    problem: str | None = None  # why the locks could not be read: a run may be active


def held_runs(
    folder: str,
    files: list[LockFile],
    held: set[DeviceInode] | dict[DeviceInode, set[int]],
    pattern: str,
) -> list[HeldLock]:
    """Pure: the lock files whose name matches the pattern and whose inode is locked (with
    the holders' pids when `held` maps them)."""
    regex = re.compile(pattern)
    runs = []
    for f in sorted(files, key=lambda f: f.name):
        found = regex.search(f.name)
        if found is None or (f.device, f.inode) not in held:
            continue
        groups = found.groupdict()
        run = groups.get("domain") or next((g for g in found.groups() if g), None) or f.name
        pids = held.get((f.device, f.inode), set()) if isinstance(held, dict) else set()
        runs.append(HeldLock(f"{folder.rstrip('/')}/{f.name}", run, tuple(sorted(pids))))
    return runs


def busy_flocks(host: CommandRunner, folder: str, pattern: str) -> FlockScan:
    """The run locks in `folder` on the host that a process holds now (never opens them).
    A folder that does not exist holds none; one that cannot be read, or a /proc/locks that
    cannot, is a problem (the caller counts it as busy)."""
    try:
        rc, out, err = host.run(
            ["find", folder, "-mindepth", "1", "-maxdepth", "1", "-type", "f",
             "-printf", "%D %i %f\\0"],
            timeout_s=TIMEOUT_S,
        )  # fmt: skip
        if rc != 0 and "No such file or directory" in err and not out:
            return FlockScan()
        if rc != 0:
            return FlockScan(problem=err.strip()[-200:] or f"find exited {rc}")
        if _capped(out):
            return FlockScan(problem=f"{folder} lists more than pvcheck reads: {TOO_MUCH}")
        files = parse_listing(out)
        if not files:
            return FlockScan()
        rc, locks, err = host.run(["cat", "/proc/locks"], timeout_s=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return FlockScan(problem=f"no answer within {exc.timeout:g}s")
    if rc != 0:
        return FlockScan(problem=f"/proc/locks: {err.strip()[-200:] or f'cat exited {rc}'}")
    if _capped(locks):
        return FlockScan(problem=f"/proc/locks is longer than pvcheck reads: {TOO_MUCH}")
    return FlockScan(held_runs(folder, files, lock_holders(locks), pattern))


MAX_HOLDERS = 16  # holder processes asked per look: a flood of locks cannot flood ssh


def runs_of_build(host: CommandRunner, folder: str, pattern: str, build: int) -> list[str]:
    """The runs (app domains) whose flock a process of Drone build `build` holds on the host:
    how a proof knows its own stack among concurrent harness runs. Every claimant is
    returned: anyone may hold a file in a 1777 lock folder with that variable set, so the
    caller takes one only when it is the one. Only the variable crosses from the holder's
    environment (`grep -z`), never the rest of it (its secrets)."""
    scan = busy_flocks(host, folder, pattern)  # the same look as for liveness
    pids = sorted({p for run in scan.held for p in run.holders if p > 0})[:MAX_HOLDERS]
    if not pids:
        return []
    try:
        # One call for all: `grep -H` names the file each line came from. Its exit code is
        # not read: a holder gone meanwhile makes it 2 while the others' lines still count.
        _, said, _ = host.run(
            ["grep", "-azxH", f"{BUILD_VAR}=[0-9]*", *(f"/proc/{p}/environ" for p in pids)],
            timeout_s=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return []
    of_build = set()
    for record in said.split("\0"):
        where, _, var = record.strip().partition(":")
        found = re.fullmatch(r"/proc/([0-9]+)/environ", where)
        if found and parse_build_var(var) == build:
            of_build.add(int(found.group(1)))
    return [run.run for run in scan.held if of_build & set(run.holders)]


# A listing cut at the output cap could hide the one held lock that matters (a user can fill
# a 1777 folder with long names, or hold many locks): never judged as quiet.
TOO_MUCH = "a run may be hidden in what was cut, so the host counts as busy"


def _capped(text: str) -> bool:
    return len(text.encode("utf-8", errors="replace")) >= MAX_OUTPUT - 4
