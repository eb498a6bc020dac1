"""The verification's task functions called directly, without the Prefect engine: the
baseline for the orchestration overhead. Each task object is swapped for its plain function
(and a thread-pool `submit`, so the read-only stage keeps its concurrency)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect.logging.loggers import disable_run_logger

import pvcheck.flows.verify as verify_flow
import pvcheck.tasks.engine as engine_tasks
from pvcheck.config import load_config
from pvcheck.report import Report
from pvcheck.runs import HostLock

# The names each module binds to a Prefect task.
TASK_NAMES = {
    verify_flow: [
        "allocator_proof",
        "capture_facts",
        "check_preconditions",
        "check_routes",
        "deploy_proof",
        "guard_proof",
        "publish_artifacts",
        "reap_dead_runs",
        "recheck_core_routes",
        "scan_docker_log",
        "teardown_task",
        "wait_for_quiet_host",
        "write_evidence_files",
    ],
    engine_tasks: ["connect_engine"],
}


class _Plain:
    def __init__(self, fn: Callable[..., Any], pool: ThreadPoolExecutor) -> None:
        self.fn, self.pool = fn, pool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.pool.submit(self.fn, *args, **kwargs)


@contextlib.contextmanager
def plain_tasks() -> Iterator[None]:
    saved = [(mod, name, getattr(mod, name)) for mod, names in TASK_NAMES.items() for name in names]
    with ThreadPoolExecutor(max_workers=8) as pool, disable_run_logger():
        for mod, name, task in saved:
            setattr(mod, name, _Plain(task.fn, pool))
        setattr(verify_flow, "publish_artifacts", _no_artifacts)  # noqa: B010 (restored below)
        try:
            yield
        finally:
            for mod, name, task in saved:
                setattr(mod, name, task)


def _no_artifacts(report: Report) -> None:
    """Artifacts live in the Prefect API: without the engine there is nowhere to put them."""


def run_direct(config_path: str) -> Report:
    """One full verification (every stage, evidence included) with no engine and no API."""
    cfg = load_config(config_path)
    params = verify_flow.RunParameters(config=cfg.target.name)
    with plain_tasks(), HostLock(cfg.target.state_dir, cfg.target.docker_host):
        state = verify_flow._verify_locked(cfg, verify_flow.new_run_id(), params)
    report = state.data
    assert isinstance(report, Report)
    return report
