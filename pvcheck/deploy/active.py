"""Detect other recipe runs or sweeps in progress, so the deploy proof never duplicates one."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from pvcheck.config import ActiveRunsConfig
from pvcheck.hosts import Host, run_on
from pvcheck.swarm import LABEL_RUN, LABEL_STACK, Swarm


def _folder_entries(folder: Path, host: Host | None) -> tuple[list[str], str | None]:
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
    rc, out, err = run_on(host, ["ls", "-A", "--", f"{folder}/"], timeout_s=30)
    if rc == 0:
        return sorted(out.split("\n")), None
    if "No such file or directory" in err:
        return [], None
    return [], err.strip()[-200:] or f"ls exited {rc}"


def active_runs(
    cfg: ActiveRunsConfig,
    swarm: Swarm,
    extra: Callable[[], list[str]] | None = None,
    host: Host | None = None,
) -> list[str]:
    """Human-readable descriptions of every active run found (empty when none)."""
    found = []
    if cfg.folder is not None:
        names, problem = _folder_entries(cfg.folder, host)
        found += [f"{cfg.folder}/{n}" for n in names if n and not n.startswith(".")]
        if problem:
            # pvcheck cannot tell that no run is active, so it must not start one.
            found.append(f"{cfg.folder} cannot be listed ({problem}); a run may be active")
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
