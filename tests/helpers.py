"""Test helpers: write variants of the shipped lab config into a temp folder."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Re-exported: the tests' lab config lives beside the bench's (bench/labconfig.py).
from bench.labconfig import FOUR_TIERS as FOUR_TIERS
from bench.labconfig import PVFIX_DONE as PVFIX_DONE
from bench.labconfig import all_tiers as all_tiers
from bench.labconfig import lab_raw as lab_raw
from bench.labconfig import write_config as write_config
from pvcheck.config import LAB_CONFIG as LAB_CONFIG
from pvcheck.config import GuardConfig
from pvcheck.records import Check
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, Swarm

ROOT = Path(__file__).resolve().parents[1]
CCCI_CONFIG = ROOT / "deployments" / "cc-ci.toml"


def check_guard(cfg: GuardConfig) -> tuple[list[Check], list[str] | None]:
    """The guard stage on its own, through the fake seams: its checks and the detection argv."""
    from pvcheck import guard
    from tests.fakes import fake_seams

    settings = guard.Settings(cfg)
    obs = guard.gather(fake_seams(), settings)
    return guard.judge(obs, settings), obs.argv


@contextlib.contextmanager
def held_in_another_process(import_line: str, lock_expr: str, folder: Path) -> Iterator[None]:
    """Hold a pvcheck lock in a child process (as another pvcheck would) while the body runs;
    the child is killed afterwards, so the kernel releases the lock."""
    code = (
        f"import sys, time; from pathlib import Path; {import_line}\n"
        f"with {lock_expr}:\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def spawn_run(config: Path, log_path: Path, *extra: str) -> subprocess.Popen[str]:
    """`pvcheck run` in a child process with no Prefect API configured (the kept one of
    this Prefect home then), as an operator's shell starts it. Output goes to a file: a pipe nobody reads would fill up and stall the run."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    argv = [sys.executable, "-m", "pvcheck.app.cli", "run", "--config", str(config), *extra]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )


def wait_for_line(
    log_path: Path, text: str, proc: subprocess.Popen[str], timeout_s: float = 180
) -> None:
    """Block until the child's log shows `text` (the child must still be running)."""
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        assert proc.poll() is None, f"the run ended before {text!r}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s:g}s"
        time.sleep(0.1)


def wait_for_throwaways(engine: Swarm, proc: subprocess.Popen[str], timeout_s: float = 180) -> str:
    """Block until the run has throwaway stacks up; returns its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        services = engine.services({LABEL_ROLE: "throwaway"})
        if services:
            return str(services[0]["Spec"]["Labels"][LABEL_RUN])
        assert proc.poll() is None, "the run ended before its reproduction"
        time.sleep(0.2)
    raise AssertionError("the run never reached the allocator reproduction")


def drone_settings(url: str, **extra: Any) -> Callable[[dict[str, Any]], None]:
    """A config mutation: deploy with the Drone driver against `url` (repo coop/ci)."""

    def use_drone(raw: dict[str, Any]) -> None:
        raw["deploy"].update(driver="drone", stack="hello", tiers=["install", "upgrade"])
        raw["deploy"]["drone"] = {
            "url": url,
            "repo": "coop/ci",
            "branch": "main",
            "token_env": "PVCHECK_TEST_DRONE_TOKEN",
            **extra,
        }

    return use_drone


def process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process now (those gone meanwhile skipped)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        table[int(stat.parent.name)] = (ppid, cmdline)
    return table


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, (parent, _) in process_table().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def recorded_events() -> Iterator[list[dict[str, Any]]]:
    """The engine's events while the block runs, streamed as they happen. A `since` query
    cannot replace this: the engine keeps only its last 256 events, and one run's capacity
    probes (a task-less service created and removed per address) alone make more."""
    import threading

    import docker

    stream = docker.from_env().events(decode=True)  # subscribed from here on
    seen: list[dict[str, Any]] = []

    def pump() -> None:
        with contextlib.suppress(Exception):  # the stream closes under it at the end
            for event in stream:
                seen.append(event)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        time.sleep(1.0)  # the last events of the block still on their way
        stream.close()
        thread.join(5)


def event_names(events: list[dict[str, Any]], kind: str, action: str = "") -> list[tuple[str, str]]:
    """(action, name) of one kind of event, in order; a volume is named by its ID."""
    return [
        (e["Action"], e["Actor"]["Attributes"].get("name", e["Actor"]["ID"]))
        for e in events
        if e.get("Type") == kind and (not action or e.get("Action") == action)
    ]
