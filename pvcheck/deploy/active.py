"""Detect other recipe runs or sweeps in progress, so the deploy proof never duplicates one."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from pvcheck.config import ActiveRunsConfig
from pvcheck.swarm import LABEL_RUN, LABEL_STACK, Swarm


def active_runs(
    cfg: ActiveRunsConfig, swarm: Swarm, extra: Callable[[], list[str]] | None = None
) -> list[str]:
    """Human-readable descriptions of every active run found (empty when none)."""
    found = []
    if cfg.folder is not None and cfg.folder.is_dir():
        found += [
            f"{cfg.folder}/{p.name}"
            for p in sorted(cfg.folder.iterdir())
            if not p.name.startswith(".")
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
) -> list[str]:
    """Wait at most cfg.wait_s for other runs to end; returns those still active (or [])."""
    deadline = time.monotonic() + cfg.wait_s
    while True:
        found = active_runs(cfg, swarm, extra)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(min(poll_s, max(0.1, deadline - time.monotonic())))
