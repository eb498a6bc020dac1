"""Review tasks: what the host holds now, and a claim's cold commands run the way a reviewer
pastes them."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import review as stage
from pvcheck.claims import ColdCommand
from pvcheck.procs import run_bounded
from pvcheck.records import Check, Family, Gate, Status
from pvcheck.seams import HostCommands, Seams
from pvcheck.stacks import residue_names
from pvcheck.swarm import LABEL_RUN, LABEL_STACK
from pvcheck.tasks.naming import run_name


def run_cold_command(
    cmd: ColdCommand,
    check_id: str,
    gate: Gate,
    host: HostCommands | None = None,
    timeout_s: float = 60,
) -> Check:
    """Commands are pvcheck's own, regenerated from the config with every value shell-quoted;
    text read from STATUS is never executed. One for the host goes through pvcheck's ssh
    options (BatchMode, host key checked, connect timeout); at the deadline the whole process
    group goes, pipeline children included."""
    if cmd.remote is not None and host is not None and host.remote:
        argv = host.argv(["sh", "-c", cmd.remote])
    else:
        argv = ["bash", "-c", cmd.command]
    done = run_bounded(argv, timeout_s, max_stdout=64 * 1024, cwd=cmd.cwd)
    out = done.stdout.decode("utf-8", errors="replace").strip()
    err = done.stderr.decode("utf-8", errors="replace").strip()
    if done.rc is None:
        found = f"no answer within {timeout_s:g}s"
    else:
        found = out or err[:300] or f"(no output, exit {done.rc})"
    # A command whose output a person judges must at least run as pasted and print it.
    ok = found == cmd.expected if cmd.exact else (done.rc == 0 and bool(out))
    return Check(
        check_id, gate, Status.PASS if ok else Status.FAIL, cmd.expected, found[:500], cmd.command
    )


@run_name
def cold_run_name(parameters: dict[str, Any]) -> str:
    """The task run's name says whose commands they are: cold-commands-m1, -m2."""
    return f"cold-commands-{str(parameters.get('gate', '')).lower()}".rstrip("-")


@task(name="cold-commands", task_run_name=cold_run_name, cache_policy=NO_CACHE)
def run_cold_commands(
    commands: list[ColdCommand], gate: Gate, host: HostCommands | None = None
) -> list[Check]:
    log = get_run_logger()
    checks = []
    for n, cmd in enumerate(commands):
        check = run_cold_command(cmd, Family.REVIEW.id(f"how.{gate}.{n + 1}"), gate, host)
        log.info(
            "$ %s\n%s  [%s, expected %s]", cmd.command, check.found, check.status, cmd.expected
        )
        checks.append(check)
    return checks


@task(name="review-host-now", cache_policy=NO_CACHE)
def observe_host(seams: Seams, recorded: stage.Recorded | None) -> stage.Observation:
    """Anything of any pvcheck run, and the deploy proof's stacks: listed, never removed."""
    log = get_run_logger()
    obs = stage.gather(seams, recorded)
    log.info(
        "docker ps/service/network ls --filter label=%s -> %s",
        LABEL_RUN,
        residue_names(obs.left) or "nothing",
    )
    for stack, left in obs.stacks_left.items():
        log.info("objects labelled %s=%s -> %s", LABEL_STACK, stack, left or "nothing")
    return obs
