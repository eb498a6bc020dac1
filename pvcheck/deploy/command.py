"""The command driver: run the operator's own harness (an argument list, never a shell) and
read the results.json it writes: {recipe, version, run_id, stages: [{name, status, tests}],
rungs, flags: {clean_teardown, ...}}.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pvcheck.config import Config
from pvcheck.deploy.attach import AttachmentSampler, fixed_stack, watched_stacks
from pvcheck.errors import StateFileError
from pvcheck.procs import MAX_LINE, child_env
from pvcheck.safeio import read_capped, writable_by_others
from pvcheck.seams import TIER_NAMES, DeployOutcome, HostCommands, Seams, TierResult, TierStatus

log = logging.getLogger(__name__)

MAX_RESULTS_BYTES = 4 * 1024 * 1024
STATUSES = {str(s) for s in TierStatus}
# On a remote host the harness runs under coreutils `timeout`: it exits 124 when it sent TERM
# at the deadline, 137 when the KILL after REMOTE_KILL_AFTER_S was needed.
REMOTE_KILL_AFTER_S = 5.0
REMOTE_GRACE_S = 10.0
TIMEOUT_EXIT_CODES = (124, 137)


class ResultsError(ValueError):
    """results.json is missing, too large, not JSON, or lacks the fields pvcheck reads."""


def parse_results(doc: Any) -> tuple[list[TierResult], bool | None, dict[str, str]]:
    """Pure: tiers, the harness's clean_teardown flag, and identifying info."""
    if not isinstance(doc, dict):
        raise ResultsError("results.json must hold a JSON object")
    stages = doc.get("stages")
    if not isinstance(stages, list):
        raise ResultsError("results.json: 'stages' must be a list")
    tiers: dict[str, TierResult] = {}
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ResultsError(f"results.json: stages[{i}] needs a string 'name'")
        status = stage.get("status")
        if status not in STATUSES:
            raise ResultsError(
                f"results.json: stages[{i}].status must be one of {sorted(STATUSES)}"
            )
        tier = TIER_NAMES.get(stage["name"].lower())
        if tier is None:
            continue  # a stage pvcheck does not judge (lint, build, ...)
        tests = stage.get("tests")
        count = len(tests) if isinstance(tests, list) else 0
        reason = str(stage.get("reason", ""))[:500]
        result = TierResult(
            tier,
            TierStatus(status),
            f"{count} tests" + (f"; {reason}" if reason else ""),
            # A recipe may declare a tier not applicable (no state to back up); never install.
            not_applicable=status == TierStatus.SKIP and bool(reason) and tier != "install",
        )
        # The same tier twice: a failing report wins, as a failing Drone step does.
        if tier not in tiers or status == TierStatus.FAIL:
            tiers[tier] = result
    flags = doc.get("flags")
    clean = flags.get("clean_teardown") if isinstance(flags, dict) else None
    info = {k: str(doc[k])[:200] for k in ("recipe", "version", "run_id") if k in doc}
    stack = results_stack(doc)
    if stack:
        info["stack"] = stack
    return list(tiers.values()), clean if isinstance(clean, bool) else None, info


_STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def results_stack(doc: dict[str, Any]) -> str | None:
    """Pure: the stack results.json names: `stack`, or the app `domain` turned into a stack
    name the way abra does (dots become underscores). Anything not a docker name is ignored."""
    stack = doc.get("stack")
    if not isinstance(stack, str):
        domain = doc.get("domain")
        stack = domain.replace(".", "_") if isinstance(domain, str) else None
    return stack if stack and _STACK_NAME.match(stack) else None


def decode_results(data: bytes, where: str) -> Any:
    """Pure: the JSON document in a results file's bytes, refused past MAX_RESULTS_BYTES."""
    if len(data) > MAX_RESULTS_BYTES:
        raise ResultsError(f"{where}: more than {MAX_RESULTS_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ResultsError(f"{where}: nested too deeply to be a results file") from None


def read_results(path: Path, not_before: float | None = None) -> Any:
    """The local results file; as root, only one root alone could have written, in a folder
    only root can change (another user could plant a passing one where the harness writes,
    or put back an earlier run's), and written since `not_before` (this harness run's start,
    in epoch seconds): an older one is a previous run's."""
    if os.geteuid() == 0:
        why = writable_by_others(path.parent)
        if why:
            raise ResultsError(f"{path.parent} is {why}: results there could be anyone's")
    try:
        data = read_capped(path, MAX_RESULTS_BYTES, root_only=True)
    except StateFileError as exc:  # a link, a FIFO, others', or past the cap: refused unread
        raise ResultsError(str(exc)) from None
    if data is None:
        raise ResultsError(f"{path}: the harness wrote no results file")
    if not_before is not None and os.stat(path, follow_symlinks=False).st_mtime < not_before:
        raise ResultsError(f"{path}: written before this harness run started; not this run's")
    return decode_results(data, str(path))


def fetch_results(host: HostCommands, path: Path) -> Any:
    """results.json from the host, read with the same size bound as a local one."""
    rc, out, _ = host.run(["head", "-c", str(MAX_RESULTS_BYTES + 1), "--", str(path)], 60)
    where = host.how(f"cat {path}")
    if rc != 0:
        raise ResultsError(f"{where}: the harness wrote no results file")
    return decode_results(out.encode(), where)


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
            tiers, clean, info = parse_results(doc)
        except ResultsError as exc:
            last = tail.splitlines()[-1:] or ["(no output)"]
            outcome.error = f"{exc} (harness exit code {rc}; its last line: {last[0][:300]})"
            return outcome
        outcome.tiers, outcome.clean_teardown_reported = tiers, clean
        outcome.info.update(info)
        if "stack" in info:
            outcome.stacks = watched_stacks(info["stack"], sampler)
        if rc != 0 and all(t.status != TierStatus.FAIL for t in tiers):
            outcome.error = f"harness exited {rc} but reported no failing tier: {tail[-300:]}"
        return outcome
