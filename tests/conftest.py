"""Shared fixtures. Integration tests need a real Docker Engine; without one they skip."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvcheck import quiet_prefect
from pvcheck.config import Config, load_config
from pvcheck.errors import TargetUnreachable
from pvcheck.swarm import Swarm
from tests.helpers import LAB_CONFIG

quiet_prefect()

# The children the tests start (pvcheck runs, Prefect workers) get Ctrl-C as an operator's
# terminal gives it, even when the test session itself runs in a background job: a shell
# starts those with SIGINT ignored, the children inherit that, and a SIGINT test (or Prefect's
# own graceful shutdown) would meet a process that carries on. A handled signal is reset to
# its default on exec; an ignored one stays ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The runs the tests start share the kept Prefect API of this Prefect home (pvcheck.api); it
# is stopped when the session ends, and would stop itself a minute after the last run.
os.environ.setdefault("PVCHECK_API_KEEP_S", "60")
PREFECT_HOME = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")

HOW_TO_RUN = (
    "no Docker Engine reachable: integration tests need the real lab. As root run "
    "`bash .ci/bootstrap && .venv/bin/python -m pytest` (installs and starts dockerd), or `bash .ci/run`"
)


@pytest.fixture(scope="session")
def engine() -> Swarm:
    try:
        return Swarm.connect("unix:///var/run/docker.sock", timeout_s=10)
    except TargetUnreachable:
        pytest.skip(HOW_TO_RUN)


@pytest.fixture(scope="session")
def lab(engine: Swarm) -> Config:
    """The built-in lab, brought up (idempotently) once per session."""
    from pvcheck.lab import lab_up

    cfg = load_config(LAB_CONFIG)
    probes = lab_up(cfg)
    bad = [p for p, r in zip(probes, cfg.routes, strict=True) if p.status not in r.expect_status]
    assert not bad, f"lab routes not answering: {bad}"
    return cfg


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real (temporary) Prefect API for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


@pytest.fixture(scope="session", autouse=True)
def _stop_the_kept_prefect_api() -> Iterator[None]:
    yield
    from pvcheck.api import stop_kept

    stop_kept(PREFECT_HOME, timeout_s=60)
