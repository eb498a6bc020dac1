"""Review tasks: run a claim's cold commands the way a reviewer pastes them."""

from __future__ import annotations

import subprocess

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck.claims import ColdCommand
from pvcheck.records import Check, Status


def run_cold_command(cmd: ColdCommand, check_id: str, gate: str, timeout_s: float = 60) -> Check:
    """Commands are pvcheck's own, regenerated from the config with every value shell-quoted;
    text read from STATUS is never executed."""
    try:
        out = subprocess.run(
            ["bash", "-c", cmd.command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        found = (
            out.stdout.strip() or out.stderr.strip()[:300] or f"(no output, exit {out.returncode})"
        )
    except subprocess.TimeoutExpired:
        found = f"no answer within {timeout_s:g}s"
    ok = found == cmd.expected
    return Check(
        check_id, gate, Status.PASS if ok else Status.FAIL, cmd.expected, found[:500], cmd.command
    )


@task(name="cold-commands", cache_policy=NO_CACHE)
def run_cold_commands(commands: list[ColdCommand], gate: str) -> list[Check]:
    log = get_run_logger()
    checks = []
    for n, cmd in enumerate(c for c in commands if c.exact):
        check = run_cold_command(cmd, f"review.how.{gate}.{n + 1}", gate)
        log.info(
            "$ %s\n%s  [%s, expected %s]", cmd.command, check.found, check.status, cmd.expected
        )
        checks.append(check)
    return checks
