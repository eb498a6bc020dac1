"""The swarm seam's retries: an engine that restarts is waited for (bounded); one that never
answered, or answers with a real error, is not."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import docker.errors
import pytest
import requests

from pvcheck.errors import TargetUnreachable
from pvcheck.swarm import Swarm

pytestmark = pytest.mark.faults


def _flaky(failures: list[BaseException]) -> Callable[[], str]:
    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    return call


def _swarm(attempts: int, reconnect_s: float) -> Swarm:
    swarm = Swarm(types.SimpleNamespace(api=None), attempts)  # type: ignore[arg-type]
    swarm.reconnect_s = reconnect_s
    return swarm


def _not_a_manager() -> docker.errors.APIError:
    response: Any = types.SimpleNamespace(status_code=503, reason="Service Unavailable", url="u")
    return docker.errors.APIError("This node is not a swarm manager", response=response)


def test_a_restarting_engine_is_ridden_out_within_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda _: None)
    refused = requests.exceptions.ConnectionError("refused")
    failures: list[BaseException] = [refused, refused, _not_a_manager(), _not_a_manager()]
    swarm = _swarm(attempts=2, reconnect_s=60)
    assert swarm.call(_flaky(failures)) == "ok" and swarm.requests == 5


def test_without_a_window_attempts_bound_it_and_the_error_is_exit_3() -> None:
    swarm = _swarm(attempts=2, reconnect_s=0)
    with pytest.raises(TargetUnreachable, match="stopped answering"):
        swarm.call(_flaky([_not_a_manager()] * 3))
    assert not swarm.lost


def test_a_real_api_error_is_not_retried_as_a_restart() -> None:
    response: Any = types.SimpleNamespace(status_code=409, reason="Conflict", url="u")
    swarm = _swarm(attempts=3, reconnect_s=60)
    with pytest.raises(docker.errors.APIError):
        swarm.call(_flaky([docker.errors.APIError("name conflicts", response=response)]))
    assert swarm.requests == 1


# What `docker stack deploy` printed when it ran while dockerd came back from a restart
# (seen in tests/integration/test_faults.py): the CLI seam waits for it like the API seam.
RESTARTED = (
    "Since --detach=false was not specified, tasks will be created in the background.\n"
    "In a future release, --detach=false will become the default.\n"
    "failed to create network pvc-alloc-1da453-r1-6_internal: Error response from daemon: "
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
    "connect this node to swarm and try again."
)


def test_the_cli_waits_for_an_engine_back_without_its_swarm_role_yet() -> None:
    from pvcheck.stackcli import engine_not_back

    assert engine_not_back(RESTARTED)
    assert engine_not_back("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    # A real refusal is reported at once.
    assert not engine_not_back("services.app Additional property privileged2 is not allowed")
