"""Detect other recipe runs or sweeps in progress, so the deploy proof never duplicates one."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from pvcheck.config import ActiveRunsConfig
from pvcheck.hosts import Host, run_on
from pvcheck.swarm import LABEL_RUN, LABEL_STACK, Swarm


def _folder_entries(folder: Path, host: Host | None) -> list[str]:
    """Names in the folder on the target host ([] when it does not exist)."""
    if host is None or not host.remote:
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    rc, out, _ = run_on(host, ["ls", "-A", "--", str(folder)], timeout_s=30)
    return sorted(out.split("\n")) if rc == 0 else []


def active_runs(
    cfg: ActiveRunsConfig,
    swarm: Swarm,
    extra: Callable[[], list[str]] | None = None,
    host: Host | None = None,
) -> list[str]:
    """Human-readable descriptions of every active run found (empty when none)."""
    found = []
    if cfg.folder is not None:
        found += [
            f"{cfg.folder}/{name}"
            for name in _folder_entries(cfg.folder, host)
            if name and not name.startswith(".")
        ]
    if cfg.stack_pattern:
        pattern = re.compile(cfg.stack_pattern)
        stacks = set()
        for svc in swarm.services():
            labels = svc["Spec"].get("Labels") or {}
            stack = labels.get(LABEL_STACK)
            # Our own run's stacks are not "another run".
            if stack and LABEL_RUN not in labels and pattern.search(stack):
                stacks.add(stack)
        found += [f"stack {s}" for s in sorted(stacks)]
    if extra is not None:
        found += extra()
    return found


def wait_until_idle(
    cfg: ActiveRunsConfig,
    swarm: Swarm,
    extra: Callable[[], list[str]] | None = None,
    poll_s: float = 5.0,
    host: Host | None = None,
) -> list[str]:
    """Wait at most cfg.wait_s for other runs to end; returns those still active (or [])."""
    deadline = time.monotonic() + cfg.wait_s
    while True:
        found = active_runs(cfg, swarm, extra, host)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(min(poll_s, max(0.1, deadline - time.monotonic())))
