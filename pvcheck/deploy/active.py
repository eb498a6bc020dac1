"""Detect other recipe runs or sweeps in progress, so pvcheck never deploys beside one.

Signals, any of which means "busy": a harness run lock some process holds a flock on
(pvcheck.liveness; cc-ci since commit b302f3a, 2026-06-10: a stale unheld lock file is no
run), a sweep whose systemd service runs, whose timer is due or just fired, on the machine
that owns it (pvcheck.timers), a stack that matches the harness naming (never a control-plane
stack: on cc-ci both end in `_ci_commoninternet_net`), a running Drone build, and, only when
configured, the older signals: an entry in an active-run folder (the registry cc-ci retired)
and a sweep's marker file. A signal that cannot be read counts as busy too: pvcheck cannot
tell that nothing runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvcheck import progress
from pvcheck.config import ActiveRunsConfig
from pvcheck.liveness import CommandRunner, Here, busy_flocks
from pvcheck.seams import HostCommands, SwarmApi
from pvcheck.swarm import LABEL_RUN, LABEL_STACK
from pvcheck.timers import read_sweeps, sweep_activity


def _folder_entries(folder: Path, host: HostCommands | None) -> tuple[list[str], str | None]:
    """Names in the folder on the target host ([] when it does not exist), and why it could
    not be listed when it exists but cannot be read."""
    if host is None or not host.remote:
        try:
            return sorted(p.name for p in folder.iterdir()), None
        except FileNotFoundError:
            return [], None
        except OSError as exc:
            return [], exc.strerror or str(exc)
    # The trailing slash makes ls refuse a file instead of listing its name.
    rc, out, err = host.run(["ls", "-A", "--", f"{folder}/"], timeout_s=30)
    if rc == 0:
        return sorted(out.split("\n")), None
    if "No such file or directory" in err:
        return [], None
    return [], err.strip()[-200:] or f"ls exited {rc}"


def _present_markers(markers: list[Path], host: HostCommands | None) -> list[str]:
    """The marker files that exist on the target host."""
    if not markers:
        return []
    if host is None or not host.remote:
        return [str(m) for m in markers if m.exists() or m.is_symlink()]
    # `ls -d` prints the ones that exist and complains about the rest.
    rc, out, err = host.run(["ls", "-d", "--", *map(str, markers)], timeout_s=30)
    present = [line for line in out.split("\n") if line]
    if rc not in (0, 2) or (rc == 2 and "No such file" not in err):
        present.append(f"{markers[0].parent} cannot be read ({err.strip()[-200:]})")
    return present


def harness_stacks(
    services: list[dict[str, Any]], pattern: str, control_plane: list[str]
) -> list[str]:
    """Pure: stacks whose name matches the harness pattern, except pvcheck's own and any
    stack that holds a control-plane service."""
    regex = re.compile(pattern)
    control_stacks = set()
    candidates = set()
    for svc in services:
        labels = svc["Spec"].get("Labels") or {}
        stack = labels.get(LABEL_STACK)
        if not stack:
            continue
        if svc["Spec"].get("Name") in control_plane:
            control_stacks.add(stack)
        elif LABEL_RUN not in labels and regex.search(stack):
            candidates.add(stack)
    return sorted(candidates - control_stacks)


def _locks_and_sweeps(cfg: ActiveRunsConfig, host: HostCommands | None) -> list[str]:
    """Held harness run locks and active sweeps, each read on the machine that owns it."""
    target: CommandRunner = host if host is not None else Here()
    found = []
    if cfg.lock_folder is not None:
        scan = busy_flocks(target, str(cfg.lock_folder), cfg.lock_pattern)
        found += [lock.describe() for lock in scan.held]
        if scan.problem:
            found.append(
                f"{cfg.lock_folder}: run locks cannot be read ({scan.problem}); a run may be active"
            )
    now = datetime.now(UTC)
    places: list[tuple[list[str], CommandRunner, str]] = [
        (cfg.sweep_units, target, "on the target host"),
        (cfg.sweep_units_here, Here(), "on this machine"),
    ]
    for units, machine, where in places:
        if units:
            read = read_sweeps(machine, units)
            found += sweep_activity(read, now, cfg.sweep_lead_s, cfg.sweep_window_s, where)
    return found


def active_runs(
    cfg: ActiveRunsConfig,
    swarm: SwarmApi,
    extra: Callable[[], list[str]] | None = None,
    host: HostCommands | None = None,
    stack_pattern: str | None = None,
    control_plane: list[str] | None = None,
) -> list[str]:
    """Human-readable descriptions of every active run found (empty when none).

    `stack_pattern` is the deploy section's harness pattern, used when the active-runs
    section names none; `extra` asks other sources (the Drone API)."""
    found = []
    if cfg.folder is not None:
        names, problem = _folder_entries(cfg.folder, host)
        found += [f"{cfg.folder}/{n}" for n in names if n and not n.startswith(".")]
        if problem:
            # pvcheck cannot tell that no run is active, so it must not start one.
            found.append(f"{cfg.folder} cannot be listed ({problem}); a run may be active")
    found += [f"sweep marker {m}" for m in _present_markers(cfg.markers, host)]
    found += _locks_and_sweeps(cfg, host)
    pattern = cfg.stack_pattern or stack_pattern
    if pattern:
        stacks = harness_stacks(swarm.services(), pattern, control_plane or [])
        found += [f"stack {s}" for s in stacks]
    if extra is not None:
        found += extra()
    return found


def wait_until_idle(
    cfg: ActiveRunsConfig,
    swarm: SwarmApi,
    extra: Callable[[], list[str]] | None = None,
    poll_s: float = 5.0,
    host: HostCommands | None = None,
    stack_pattern: str | None = None,
    control_plane: list[str] | None = None,
    on_wait: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Wait at most cfg.wait_s for other runs to end; returns those still active (or [])."""
    started = time.monotonic()
    deadline = started + cfg.wait_s
    while True:
        found = active_runs(cfg, swarm, extra, host, stack_pattern, control_plane)
        if not found or time.monotonic() >= deadline:
            return found
        if on_wait is not None:
            on_wait(found)
        progress.report("waiting for other runs: " + "; ".join(found), started, deadline)
        time.sleep(min(poll_s, max(0.1, deadline - time.monotonic())))
