"""The command driver: run the operator's own harness (an argument list, never a shell) and
read the results.json it writes (`pvcheck.harnessresults`: cc-ci's schema 2, or stages).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

from pvcheck.config import Config
from pvcheck.deploy.attach import AttachmentSampler, fixed_stack, watched_stacks
from pvcheck.harnessresults import (
    ResultsError,
    fetch_results,
    parse_results,
    read_results,
)
from pvcheck.procs import MAX_LINE, child_env
from pvcheck.seams import DeployOutcome, Seams, TierStatus

__all__ = ["CommandDriver", "ResultsError", "read_results", "run_harness"]

log = logging.getLogger(__name__)

# On a remote host the harness runs under coreutils `timeout`: it exits 124 when it sent TERM
# at the deadline, 137 when the KILL after REMOTE_KILL_AFTER_S was needed.
REMOTE_KILL_AFTER_S = 5.0
REMOTE_GRACE_S = 10.0
TIMEOUT_EXIT_CODES = (124, 137)


def run_harness(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """Run argv (no shell), streaming its output to the log; kill its group at the deadline."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=child_env(env),  # its own variables, none of pvcheck's secrets
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        # Lines are read at most MAX_LINE at a time: a harness that prints gigabytes without
        # a newline costs no memory.
        while chunk := proc.stdout.readline(MAX_LINE):
            line = chunk.rstrip()
            log.info("harness | %s", line)
            tail.append(line)
            del tail[:-20]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    reader.join(timeout=5)
    return rc, "\n".join(tail)


class CommandDriver:
    def __init__(self, seams: Seams, cfg: Config, run_id: str) -> None:
        assert cfg.deploy is not None and cfg.deploy.command is not None
        self.swarm, self.host, self.cfg, self.run_id = seams.swarm, seams.host, cfg, run_id
        self.deploy_cfg, self.command = cfg.deploy, cfg.deploy.command

    def busy(self) -> list[str]:
        from pvcheck.deploy.drone import running_builds

        return running_builds(self.cfg)

    def run(self) -> DeployOutcome:
        deploy = self.deploy_cfg
        fixed = fixed_stack(deploy.stack, deploy.stack_pattern, deploy.recipe)
        watched = fixed or f"a stack matching {deploy.stack_pattern}"
        outcome = DeployOutcome("command", deploy.recipe, watched)
        results = self.command.results
        host = self.host
        argv = [a.replace("{recipe}", self.deploy_cfg.recipe) for a in self.command.argv]
        env = {
            "PVCHECK_RUN_ID": self.run_id,
            "PVCHECK_RECIPE": self.deploy_cfg.recipe,
            "PVCHECK_RESULTS": str(results),
        }
        timeout_s = self.command.timeout_s
        local_timeout_s = timeout_s
        if host.remote:
            # The harness runs on the host, as the operator runs it there; results come back.
            # Killing the local ssh client would not stop it there, so the host's own
            # `timeout` bounds it (TERM, then KILL to its process group); the local deadline
            # is only a backstop for a connection that hangs.
            host.run(["rm", "-f", "--", str(results)], timeout_s=30)
            remote = ["timeout", "-k", f"{REMOTE_KILL_AFTER_S:g}", f"{timeout_s:g}"]
            argv = host.argv([*remote, "env", *(f"{k}={v}" for k, v in env.items()), *argv])
            env = {}
            local_timeout_s = timeout_s + REMOTE_KILL_AFTER_S + REMOTE_GRACE_S
        else:
            results.unlink(missing_ok=True)  # never judge a previous run's file
        log.info("harness: %s (timeout %gs)", " ".join(argv), timeout_s)
        started = time.monotonic()
        wall_start = time.time()  # results.json must be newer than this
        with AttachmentSampler(
            self.swarm, self.cfg.network.name, fixed, deploy.stack_pattern
        ) as sampler:
            try:
                rc, tail = run_harness(argv, env, local_timeout_s)
            except OSError as exc:
                rc, tail = -1, ""
                outcome.error = f"cannot start the harness: {exc}"
        elapsed = time.monotonic() - started
        if host.remote and rc in TIMEOUT_EXIT_CODES and elapsed >= timeout_s:
            rc = None  # the host's `timeout` ended it
        outcome.info["exit_code"] = "timeout" if rc is None else str(rc)
        outcome.info["seconds"] = f"{elapsed:.1f}"
        outcome.attached = bool(sampler.seen)
        outcome.attach_detail = sampler.describe()
        outcome.stacks = watched_stacks(fixed, sampler)
        if outcome.error:
            return outcome
        if rc is None:
            outcome.error = f"harness did not finish within {timeout_s:g}s; killed"
            return outcome
        try:
            doc = (
                fetch_results(host, results)
                if host.remote
                else read_results(results, not_before=wall_start - 1)
            )
            reported = parse_results(doc)
        except ResultsError as exc:
            last = tail.splitlines()[-1:] or ["(no output)"]
            outcome.error = f"{exc} (harness exit code {rc}; its last line: {last[0][:300]})"
            return outcome
        outcome.take(reported)
        if "stack" in reported.info:
            outcome.stacks = watched_stacks(reported.info["stack"], sampler)
        if rc != 0 and all(t.status != TierStatus.FAIL for t in outcome.tiers):
            outcome.error = f"harness exited {rc} but reported no failing tier: {tail[-300:]}"
        return outcome
