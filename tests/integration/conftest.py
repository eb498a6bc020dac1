"""Every test in this folder needs the real lab: marked `integration` here, once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvcheck import twin
from pvcheck.config import Config, load_config
from pvcheck.swarm import Swarm
from tests.helpers import ROOT

HERE = Path(__file__).parent
TWIN = ROOT / "lab" / "cc-ci-twin.toml"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cc_ci_twin(engine: Swarm) -> Iterator[Config]:
    """The twin, brought up once per session, and the stand-in's token in the environment
    the shipped config names (deploy.drone.token_env, moved by the overlay)."""
    from pvcheck.lab import lab_up

    cfg = load_config(TWIN)
    probes = lab_up(cfg)
    bad = [p for p, r in zip(probes, cfg.routes, strict=True) if p.status not in r.expect_status]
    assert not bad, f"twin routes not answering: {bad}"
    assert cfg.lab is not None and cfg.deploy is not None and cfg.deploy.drone is not None
    token = twin.token_path(cfg.lab).read_text().strip()
    os.environ[cfg.deploy.drone.token_env] = token
    yield cfg
    os.environ.pop(cfg.deploy.drone.token_env, None)
    # The twin's host machine stops with the session (its engine's data stays: the next
    # `lab up` has it back in seconds); nothing of it runs on after the tests.
    from pvcheck.machine import stop_machine

    twin.stop_drone_api(cfg.lab)
    stop_machine(cfg.lab)
