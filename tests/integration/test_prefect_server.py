"""End to end with a real `prefect server`: deployments served by `pvcheck serve`, runs
triggered through the REST API exactly as the UI's Run and Cancel buttons do."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pvcheck.api import free_port, wait_healthy
from pvcheck.config import Config
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.helpers import ROOT, write_config
from tests.integration.cdp import CHROMIUM, chromium

pytestmark = [pytest.mark.slow]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
# The server requires credentials, as `pvcheck serve` insists (an API anyone on the machine
# can call would hand out runs that pvcheck executes as root).
AUTH = "pvcheck-test:0f3c5a9b7e21d4"
AUTH_HEADER = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}


def api_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of a process that talks to the test server (serve, a worker)."""
    return {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_API_AUTH_STRING": AUTH,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        # The UI in a browser asks this address for the API (the default is port 4200).
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    assert wait_healthy(url, 300, proc), (home / "server.log").read_text()[-3000:]
    yield url
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def served(
    server: str, lab: Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("served")
    config = write_config(tmp)
    env = api_env(server)
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvcheck.app.cli",
            "serve",
            "--config",
            str(config),
            "--cron",
            "17 3 * * *",
            "--timezone",
            "Europe/Berlin",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(_deployments(server)) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "serve.log").read_text()[
            -3000:
        ]
        time.sleep(1)
    yield server, tmp
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    for _ in range(10):  # SQLite behind a busy server answers 503 now and then
        resp = httpx.post(
            f"{url}{path}", json=body, headers=AUTH_HEADER, timeout=30, trust_env=False
        )
        if resp.status_code != 503:
            break
        time.sleep(1)
    resp.raise_for_status()
    return resp.json()


def _deployments(url: str) -> dict[str, dict[str, Any]]:
    try:
        return {d["name"]: d for d in _post(url, "/deployments/filter", {})}
    except httpx.HTTPError:
        return {}


def _trigger(url: str, deployment: str) -> str:
    """What the UI's Run button does: create a flow run of the deployment."""
    dep = _deployments(url)[deployment]
    return str(_post(url, f"/deployments/{dep['id']}/create_flow_run", {})["id"])


def _run(url: str, run_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/flow_runs/{run_id}", headers=AUTH_HEADER, timeout=30, trust_env=False)
    resp.raise_for_status()
    return dict(resp.json())


def _wait(url: str, run_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = _run(url, run_id)
        if run["state_type"] in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(1)


def _logs(url: str, run_id: str) -> str:
    """Every log line of a flow run (its tasks' too), page by page, oldest first."""
    lines: list[str] = []
    while True:
        page = _post(
            url,
            "/logs/filter",
            {
                "logs": {"flow_run_id": {"any_": [run_id]}},
                "limit": 200,
                "offset": len(lines),
                "sort": "TIMESTAMP_ASC",
            },
        )
        lines += [entry["message"] for entry in page]
        if len(page) < 200:
            return "\n".join(lines)


@pytest.mark.faults
def test_the_served_api_refuses_anonymous_calls_and_takes_no_config_path(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    anonymous = httpx.post(f"{url}/deployments/filter", json={}, timeout=30, trust_env=False)
    assert anonymous.status_code == 401
    for name, dep in _deployments(url).items():
        schema = dep["parameter_openapi_schema"]
        assert "config_path" not in str(schema), name
        # A flat form: top-level fields, no nested model and no `| None` toggle.
        assert not schema.get("definitions") and "anyOf" not in str(schema), name
        assert schema["properties"]["target"]["type"] == "string"
        assert dep["parameters"]["target"] == "lab"
    form = _deployments(url)["manual"]["parameter_openapi_schema"]["properties"]
    batch = form["allocator_batch"]
    assert (batch["minimum"], batch["maximum"], batch["type"]) == (1, 20, "integer")
    assert batch["title"] == "Throwaway stacks per round" and "1 to 20" in batch["description"]
    # Out of bounds, as the UI's form submits it: the server says why, and no run starts.
    dep = _deployments(url)["manual"]
    refused = httpx.post(
        f"{url}/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"allocator_batch": 50}},
        headers=AUTH_HEADER,
        timeout=30,
        trust_env=False,
    )
    assert refused.status_code in (409, 422), refused.text
    assert "50 is greater than the maximum of 20" in refused.text
    # The host is the deployment's own (read-only in the form): a run naming a config of its
    # own is refused by the server, before anything runs.
    assert form["target"]["readOnly"] and form["target"]["enum"] == ["lab"]
    mine = httpx.post(
        f"{url}/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"target": "/tmp/mine.toml"}},
        headers=AUTH_HEADER,
        timeout=30,
        trust_env=False,
    )
    assert mine.status_code in (409, 422), mine.text
    assert "'/tmp/mine.toml' is not one of ['lab']" in mine.text


def test_deployments_and_nightly_schedule(served: tuple[str, Path]) -> None:
    url, _ = served
    deps = _deployments(url)
    assert {"manual", "nightly", "review", "janitor"} <= set(deps)
    for dep in deps.values():
        assert (
            dep["concurrency_limit"] == 1
            or (dep.get("global_concurrency_limit") or {}).get("limit") == 1
        )
    schedules = deps["nightly"]["schedules"]
    assert len(schedules) == 1 and schedules[0]["active"]
    assert schedules[0]["schedule"]["cron"] == "17 3 * * *"
    assert schedules[0]["schedule"]["timezone"] == "Europe/Berlin"
    # The deployment page names the schedule by its slug: the time zone shows there.
    assert schedules[0]["slug"] == "every day at 03:17 Europe/Berlin"


@pytest.mark.faults
def test_ui_trigger_completes_with_evidence_and_a_second_trigger_is_cancelled(
    served: tuple[str, Path], engine: Swarm, tmp_path: Path
) -> None:
    url, _ = served
    first = _trigger(url, "manual")
    deadline = time.monotonic() + 120
    while _run(url, first)["state_type"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    second = _trigger(url, "manual")  # while the first runs
    janitor = _trigger(url, "janitor")  # the host lock is the first run's: it steps aside
    done = _wait(url, first)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert "pvcheck verdict PASS" in done["state"]["message"]
    assert _wait(url, second)["state_type"] == "CANCELLED"
    stepped_aside = _wait(url, janitor)
    assert stepped_aside["state_type"] == "CANCELLED"
    # The janitor names the run holding the host, and its log has no engine traceback.
    assert (
        f"another pvcheck run holds this host: run {done['name']}"
        in (stepped_aside["state"]["message"])
    )
    assert "Engine execution exited with unexpected exception" not in _logs(url, janitor)
    # As the operator sees it: the cancelled run's page in a real browser names the run that
    # holds the host, and shows no traceback or engine error. (The page reads a finished
    # run's log once: wait until the run's last lines have reached the server.)
    holder = f"another pvcheck run holds this host: run {done['name']}"
    deadline = time.monotonic() + 60
    while holder not in _logs(url, janitor) and time.monotonic() < deadline:
        time.sleep(1)
    with chromium(tmp_path / "profile") as page:
        page.goto(f"{url.removesuffix('/api')}/")
        page.wait_for_text("")
        page.evaluate(f"localStorage.setItem('prefect-password', btoa({AUTH!r}))")
        page.goto(f"{url.removesuffix('/api')}/runs/flow-run/{janitor}")
        shown = page.wait_for_text("Cancelled", holder)
    for crash in ("Traceback", "unexpected exception", "CancelledRun"):
        assert crash not in shown, crash
    # The run the concurrency limit cancelled is told why in its own log.
    assert f"run {done['name']}" in _logs(url, second)
    wanted = [
        "docker network inspect --verbose proxy",
        "proxy subnet 10.10.0.0/16",
        "round 1: peak",
        "guard.detects: pass",
        "residue with label",
        # pvcheck's own modules reach the task logs: the deploy stage's CLI command and
        # what the stage found.
        "stackcli: docker stack deploy --compose-file - --resolve-image never",
        "stackcli: docker stack rm",
        "tier install: pass",
        "attachment:",
    ]
    # A run's last log lines reach the server a moment after its final state: poll.
    deadline = time.monotonic() + 60
    while [w for w in wanted if w not in _logs(url, first)] and time.monotonic() < deadline:
        time.sleep(1)
    logs = _logs(url, first)
    for line in wanted:
        assert line in logs, line
    artifacts = _post(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [first]}}})
    keys = {a["key"] for a in artifacts}
    assert {
        "pvcheck-verdict",
        "pvcheck-network-facts",
        "pvcheck-allocator",
        "pvcheck-trend",
        "pvcheck-allocator-rounds",
        "pvcheck-history",
        "pvcheck-fleet",
    } <= keys
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    # The chart is inside the artifact (a browser resolves no file next to it).
    assert "](data:image/svg+xml;base64," in by_key["pvcheck-trend"]["data"]
    assert by_key["pvcheck-allocator-rounds"]["type"] == "table"
    fleet = by_key["pvcheck-fleet"]["data"]
    assert "lab" in str(fleet) and "PASS" in str(fleet)
    assert any(a["type"] == "progress" and a["data"] == 100.0 for a in artifacts)
    assert not any(list_residue(engine, f"{LABEL_RUN}={done['name']}").values())


@pytest.mark.faults
def test_cancel_from_the_server_during_the_allocator_leaves_zero_residue(
    served: tuple[str, Path], engine: Swarm
) -> None:
    url, _ = served
    run_id = _trigger(url, "manual")
    deadline = time.monotonic() + 240
    while "deploying 5 throwaway stacks" not in _logs(url, run_id):
        assert time.monotonic() < deadline and _run(url, run_id)["state_type"] not in TERMINAL
        time.sleep(0.5)
    name = _run(url, run_id)["name"]
    # The UI's Cancel button: move the run to CANCELLING.
    _post(url, f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    final = _wait(url, run_id)
    assert final["state_type"] == "CANCELLED", final["state"]
    deadline = time.monotonic() + 120
    while any(list_residue(engine, f"{LABEL_RUN}={name}").values()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not any(list_residue(engine, f"{LABEL_RUN}={name}").values())


def test_two_runs_append_two_history_records_and_the_chart_shows_both(
    served: tuple[str, Path],
) -> None:
    url, tmp = served
    history = tmp / "docs" / "HISTORY-pvcheck.jsonl"
    before = len(history.read_text().splitlines()) if history.exists() else 0
    for _ in range(2):
        assert _wait(url, _trigger(url, "manual"))["state_type"] == "COMPLETED"
    lines = history.read_text().splitlines()
    assert len(lines) == before + 2
    svg = (tmp / "docs" / "TREND-pvcheck.svg").read_text()
    assert svg.startswith("<svg") and svg.count('fill="#1f5fbf"') >= 2
    assert "## Trend (last" in (tmp / "docs" / "STATUS-pvcheck.md").read_text()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/bootstrap installs it)"
)
def test_the_run_form_in_a_real_browser_shows_titles_and_bounds(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = served
    ui = url.removesuffix("/api")
    dep = _deployments(url)["manual"]
    with chromium(tmp_path / "profile") as page:
        # Log in as the UI's own login page does (the server requires the auth string).
        page.goto(f"{ui}/")
        page.wait_for_text("")
        page.evaluate(f"localStorage.setItem('prefect-password', btoa({AUTH!r}))")
        page.goto(f"{ui}/deployments/deployment/{dep['id']}/run")
        shown = page.wait_for_text(
            "Throwaway stacks per round",
            "(1 to 20)",
            "Stacks at once",
            "(1 to 10)",
            "Host",
            "Adopt a finished harness run",
        )
    assert "RunParameters" not in shown and "params" not in shown.split()


@pytest.mark.parametrize(
    ("runner", "after_stop"), [("pvcheck", "COMPLETED"), ("prefect", "CANCELLED")]
)
def test_stopping_serve_leaves_a_run_that_has_ended_as_it_ended(
    server: str, tmp_path: Path, runner: str, after_stop: str
) -> None:
    """A run Completed whose process is still exiting when serve gets SIGTERM: pvcheck's
    runner leaves it Completed; Prefect's own (the second case, the hazard itself) rewrites it
    Cancelled. Seen in CI: a fleet run's PASS turned Cancelled when the test stopped serve."""
    script = Path(__file__).with_name("linger_serve.py")
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), runner], stdout=log, stderr=subprocess.STDOUT,
            env=api_env(server), cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "linger" not in _deployments(server):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(1)
            run_id = _trigger(server, "linger")
            assert _wait(server, run_id, timeout_s=120)["state_type"] == "COMPLETED"
            proc.terminate()  # while the run's process lingers (LINGER_S)
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    final = _run(server, run_id)
    assert final["state_type"] == after_stop, (final["state"], log_path.read_text()[-2000:])
