"""Deploy drivers at their seams: the command driver runs real scripts; the Drone driver talks
to a small Drone API server on 127.0.0.1; outcome judging is pure."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from pvcheck.config import Config, load_config
from pvcheck.deploy import judge_outcome
from pvcheck.deploy.active import active_runs
from pvcheck.deploy.command import CommandDriver
from pvcheck.deploy.drone import DroneDriver, tiers_from_build
from pvcheck.errors import ConfigError
from pvcheck.harnessresults import MAX_RESULTS_BYTES, ResultsError, parse_results, read_results
from pvcheck.records import Gate, Status, judge_gate
from pvcheck.seams import DeployOutcome, TierResult, TierStatus
from tests.fakes import DroneState, FakeSwarm, fake_seams
from tests.fakes import drone_server as serve_drone
from tests.helpers import drone_settings, write_config

TOKEN = "drone-token-5f1c9e-DO-NOT-LEAK"


def results_doc(**stages: str) -> dict[str, Any]:
    return {
        "recipe": "hello",
        "version": "1.1.0",
        "run_id": "r1",
        "stages": [{"name": n, "status": s, "tests": [{"name": "t"}]} for n, s in stages.items()],
        "rungs": 4,
        "flags": {"clean_teardown": True},
    }


def test_parse_results_maps_stage_names_to_tiers() -> None:
    doc = results_doc(lint="pass", install="pass", upgrade="fail", **{"backup/restore": "skip"})
    got = parse_results(doc)
    assert [(t.tier, t.status) for t in got.tiers] == [
        ("lint", "pass"),
        ("install", "pass"),
        ("upgrade", "fail"),
        ("backup_restore", "skip"),
    ]
    assert got.clean_teardown is True and got.no_secret_leak is None
    assert got.info == {"recipe": "hello", "version": "1.1.0", "run_id": "r1"}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"stages": "x"},
        {"stages": [{"status": "pass"}]},
        {"stages": [{"name": "install", "status": "great"}]},
    ],
    ids=["not-object", "stages-not-list", "no-name", "bad-status"],
)
@pytest.mark.faults
def test_parse_results_rejects_malformed(doc: Any) -> None:
    with pytest.raises(ResultsError):
        parse_results(doc)


def command_cfg(
    tmp_path: Path,
    script: str,
    timeout_s: float = 30,
    *more: Callable[[dict[str, Any]], None],
) -> Config:
    """A lab config whose deploy proof runs `script` as the harness (command driver)."""
    harness = tmp_path / "harness.py"
    harness.write_text(script)
    results = tmp_path / "results.json"

    def use_command(raw: dict[str, Any]) -> None:
        raw["deploy"].update(driver="command", stack="hello", tiers=["install", "upgrade"])
        raw["deploy"]["command"] = {
            "argv": [sys.executable, str(harness), "{recipe}"],
            "results": str(results),
            "timeout_s": timeout_s,
        }
        for mutate in more:
            mutate(raw)

    return load_config(write_config(tmp_path, use_command))


HARNESS = """
import json, os, sys
print("deploying", sys.argv[1], flush=True)
doc = {doc}
if doc is not None:
    open(os.environ["PVCHECK_RESULTS"], "w").write(json.dumps(doc))
sys.exit({rc})
"""


@pytest.mark.parametrize(
    ("doc", "rc", "expect"),
    [
        (
            results_doc(install="pass", upgrade="pass"),
            0,
            {"deploy.tier.install": "pass", "deploy.tier.upgrade": "pass"},
        ),
        (
            results_doc(install="pass", upgrade="fail"),
            1,
            {"deploy.tier.install": "pass", "deploy.tier.upgrade": "fail"},
        ),
        (None, 0, {"deploy.driver": "error", "deploy.tier.install": "fail"}),
    ],
    ids=["pass", "fail", "missing-file"],
)
def test_command_driver_with_a_real_script(
    tmp_path: Path, doc: Any, rc: int, expect: dict[str, str]
) -> None:
    cfg = command_cfg(tmp_path, HARNESS.format(doc=repr(doc), rc=rc))
    swarm = FakeSwarm(network_services=["hello_app"])
    outcome = CommandDriver(fake_seams(swarm), cfg, "pv-1-abc").run()
    checks = {c.id: str(c.status) for c in judge_outcome(outcome, ["install", "upgrade"], "proxy")}
    for check_id, status in expect.items():
        assert checks[check_id] == status
    assert checks["deploy.attached"] == "pass" and outcome.info["exit_code"] == str(rc)
    if doc is None:
        assert outcome.error and "wrote no results file" in outcome.error
        # The harness's last line helps the operator see why (HARNESS prints "deploying").
        assert outcome.error.endswith("(harness exit code 0; its last line: deploying notes)")


@pytest.mark.faults
def test_command_driver_kills_a_harness_past_its_timeout(tmp_path: Path) -> None:
    cfg = command_cfg(tmp_path, "import time; time.sleep(60)", timeout_s=1)
    outcome = CommandDriver(fake_seams(FakeSwarm()), cfg, "pv-1-abc").run()
    assert outcome.error and "did not finish within 1s" in outcome.error
    assert outcome.info["exit_code"] == "timeout"


def test_not_applicable_tier_is_skipped_but_does_not_block_the_gate() -> None:
    outcome = DeployOutcome(
        "compose",
        "hello",
        "s",
        attached=True,
        tiers=[
            TierResult("install", TierStatus.PASS),
            TierResult("backup_restore", TierStatus.SKIP, "no state", not_applicable=True),
        ],
    )
    checks = judge_outcome(outcome, ["install", "backup_restore"], "proxy")
    br = next(c for c in checks if c.id == "deploy.tier.backup_restore")
    assert br.status == Status.SKIP and br.detail == "not applicable: no state"
    unproven = DeployOutcome(
        "compose",
        "hello",
        "s",
        attached=True,
        tiers=[TierResult("install", TierStatus.PASS), TierResult("upgrade", TierStatus.SKIP)],
    )
    skipped = next(
        c
        for c in judge_outcome(unproven, ["install", "upgrade"], "proxy")
        if c.id == "deploy.tier.upgrade"
    )
    assert skipped.status == Status.SKIP and not skipped.not_applicable
    assert judge_gate(Gate.M2, [skipped]).status == Status.SKIP


def test_active_runs_folder_and_stack_pattern(tmp_path: Path) -> None:
    folder = tmp_path / "active"
    folder.mkdir()
    (folder / "recipe.example.test").write_text("")
    (folder / ".hidden").write_text("")
    services = [
        {"Spec": {"Name": "recipe-x_app", "Labels": {"com.docker.stack.namespace": "recipe-x"}}},
        {
            "Spec": {
                "Name": "recipe-ours_app",
                "Labels": {"com.docker.stack.namespace": "recipe-ours", "pvcheck.run": "pv-1"},
            }
        },
        {"Spec": {"Name": "other_app", "Labels": {"com.docker.stack.namespace": "other"}}},
    ]
    from pvcheck.config import ActiveRunsConfig

    found = active_runs(
        ActiveRunsConfig(folder=folder, stack_pattern="^recipe-"),
        FakeSwarm(services=services),
    )
    assert found == [f"{folder}/recipe.example.test", "stack recipe-x"]


@pytest.mark.faults
def test_an_active_runs_folder_that_cannot_be_listed_counts_as_busy(tmp_path: Path) -> None:
    from pvcheck.config import ActiveRunsConfig

    def found(folder: Path) -> list[str]:
        return active_runs(ActiveRunsConfig(folder=folder), FakeSwarm())

    assert found(tmp_path / "absent") == []  # no folder: no run has registered
    (tmp_path / "a-file").write_text("")
    assert found(tmp_path / "a-file") == [
        f"{tmp_path}/a-file cannot be listed (Not a directory); a run may be active"
    ]


# --- Drone -----------------------------------------------------------------------------------
@pytest.fixture
def drone_server() -> Iterator[tuple[str, DroneState]]:
    with serve_drone(TOKEN) as served:
        yield served


def _drone_cfg(tmp_path: Path, url: str, timeout_s: float = 30) -> Config:
    return load_config(write_config(tmp_path, drone_settings(url, timeout_s=timeout_s)))


@pytest.mark.parametrize(
    ("final", "steps", "expect"),
    [
        (
            "success",
            {"install": "success", "upgrade": "success"},
            {"deploy.tier.install": "pass", "deploy.tier.upgrade": "pass"},
        ),
        (
            "failure",
            {"install": "success", "upgrade test": "failure"},
            {"deploy.tier.install": "pass", "deploy.tier.upgrade": "fail"},
        ),
    ],
    ids=["success", "failure"],
)
def test_drone_driver_runs_one_build_to_its_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    drone_server: tuple[str, DroneState],
    final: str,
    steps: dict[str, str],
    expect: dict[str, str],
) -> None:
    url, state = drone_server
    state.final, state.steps = final, steps
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    cfg = _drone_cfg(tmp_path, url)
    outcome = DroneDriver(fake_seams(FakeSwarm(["hello_app"])), cfg, "pv-1-abc").run(poll_s=0.05)
    checks = judge_outcome(outcome, ["install", "upgrade"], "proxy")
    assert {c.id: str(c.status) for c in checks if c.id in expect} == expect
    assert (
        len(state.creates) == 1
        and "branch=main" in state.creates[0]
        and "RECIPE=notes" in state.creates[0]
    )
    assert outcome.info["build"] == "42" and outcome.info["link"].endswith("/coop/ci/42")
    everything = caplog.text + repr(outcome) + json.dumps([c.as_dict() for c in checks])
    assert TOKEN not in everything


@pytest.mark.faults
def test_drone_timeout_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drone_server: tuple[str, DroneState]
) -> None:
    url, state = drone_server
    state.polls_to_finish = 10_000
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    cfg = _drone_cfg(tmp_path, url, timeout_s=0.3)
    outcome = DroneDriver(fake_seams(FakeSwarm()), cfg, "pv-1-abc").run(poll_s=0.05)
    assert outcome.error and "did not finish within 0.3s" in outcome.error
    assert state.stopped == [42] and len(state.creates) == 1


@pytest.mark.faults
def test_drone_401_is_a_clear_error_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drone_server: tuple[str, DroneState]
) -> None:
    url, state = drone_server
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", "wrong-" + TOKEN)
    outcome = DroneDriver(fake_seams(FakeSwarm()), _drone_cfg(tmp_path, url), "pv-1-abc").run(
        poll_s=0.05
    )
    assert outcome.error and "401 Unauthorized" in outcome.error
    assert TOKEN not in repr(outcome) and state.creates == []


@pytest.mark.faults
def test_drone_token_must_be_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PVCHECK_TEST_DRONE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PVCHECK_TEST_DRONE_TOKEN is not set"):
        DroneDriver(fake_seams(FakeSwarm()), _drone_cfg(tmp_path, "http://127.0.0.1:9/"), "pv-1")


def test_tiers_from_build_failing_step_wins() -> None:
    build = {
        "stages": [
            {
                "steps": [
                    {"name": "install", "status": "success"},
                    {"name": "install-check", "status": "failure"},
                ]
            }
        ]
    }
    assert [(t.tier, t.status) for t in tiers_from_build(build)] == [("install", "fail")]


# --- hostile answers -------------------------------------------------------------------------
def _drone_answering(tmp_path: Path, build_answer: httpx.Response) -> DeployOutcome:
    """A Drone whose create answer is sane and whose build answer is `build_answer`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"number": 7, "status": "pending"})
        return build_answer

    cfg = _drone_cfg(tmp_path, "http://127.0.0.1:9/")
    driver = DroneDriver(
        fake_seams(FakeSwarm()), cfg, "pv-1-abc", transport=httpx.MockTransport(handler)
    )
    return driver.run(poll_s=0.01)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(200, content=b'{"status": "' + b"x" * (5 << 20) + b'"}'), "larger than"),
        (httpx.Response(200, content=b"\x00\xff<html>not json"), "non-JSON"),
        (httpx.Response(200, json={"number": 7}), "has no status"),
        (httpx.Response(200, json={"number": 7, "status": ["success"]}), "has no status"),
        (httpx.Response(200, json=["success"]), "has no status"),
        (httpx.Response(502, text=f"bad gateway Bearer {TOKEN}"), "502"),
    ],
    ids=["huge", "binary", "no-status", "status-not-text", "not-object", "502-echoing-token"],
)
@pytest.mark.faults
def test_hostile_drone_answers_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: httpx.Response, error: str
) -> None:
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    outcome = _drone_answering(tmp_path, answer)
    assert outcome.error and error in outcome.error
    assert TOKEN not in repr(outcome) and not outcome.tiers


@pytest.mark.faults
def test_drone_build_with_odd_shapes_yields_only_well_formed_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    build = {
        "number": 7,
        "status": "success",
        "stages": [1, "x", {"steps": "abc"}, {"steps": [None, {"name": "install", "status": 3}]}],
    }
    outcome = _drone_answering(tmp_path, httpx.Response(200, json=build))
    assert outcome.error is None
    assert [(t.tier, t.status) for t in outcome.tiers] == [("install", "unver")]
    assert tiers_from_build({"stages": "not a list"}) == []


@pytest.mark.faults
def test_drone_create_without_a_build_number_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PVCHECK_TEST_DRONE_TOKEN", TOKEN)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"id": 1}))
    cfg = _drone_cfg(tmp_path, "http://127.0.0.1:9/")
    outcome = DroneDriver(fake_seams(FakeSwarm()), cfg, "pv-1", transport=transport).run(
        poll_s=0.01
    )
    assert outcome.error and "no build number" in outcome.error


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{" + b" " * (MAX_RESULTS_BYTES + 1) + b"}", "too large"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not valid JSON"),
        (b'{"stages": [', "not valid JSON"),
        (b"[" * 400_000, "nested too deeply"),
    ],
    ids=["huge", "binary", "truncated", "deeply-nested"],
)
@pytest.mark.faults
def test_hostile_results_files_are_refused(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content)
    with pytest.raises(ResultsError, match=error) as info:
        read_results(path)
    assert str(path) in str(info.value)


# --- cc-ci's real shapes: generated harness stacks beside same-suffix control-plane stacks --
CCCI_PATTERN = "^[a-z0-9]{4}-[0-9a-f]{6}_ci_commoninternet_net$"
CONTROL_PLANE = ["traefik_ci_commoninternet_net_app", "traefik_ci_commoninternet_net_socket-proxy"]


def _svc(name: str, stack: str, **labels: str) -> dict[str, Any]:
    return {"Spec": {"Name": name, "Labels": {"com.docker.stack.namespace": stack, **labels}}}


def test_control_plane_stacks_are_never_another_run() -> None:
    from pvcheck.deploy.active import harness_stacks

    services = [
        _svc("traefik_ci_commoninternet_net_app", "traefik_ci_commoninternet_net"),
        _svc("traefik_ci_commoninternet_net_socket-proxy", "traefik_ci_commoninternet_net"),
        _svc("drone_ci_commoninternet_net_app", "drone_ci_commoninternet_net"),
        _svc("cust-1a2b3c_ci_commoninternet_net_app", "cust-1a2b3c_ci_commoninternet_net"),
        _svc("pvc-x_app", "bonf-0f0f0f_ci_commoninternet_net", **{"pvcheck.run": "pv-1"}),
    ]
    found = harness_stacks(services, CCCI_PATTERN, CONTROL_PLANE)
    assert found == ["cust-1a2b3c_ci_commoninternet_net"]
    # The old suffix pattern would match the whole control plane; the control-plane rule
    # still keeps the stacks that hold a control-plane service out.
    loose = harness_stacks(services, "_ci_commoninternet_net$", CONTROL_PLANE)
    assert "traefik_ci_commoninternet_net" not in loose


def test_sweep_markers_and_running_builds_count_as_active(tmp_path: Path) -> None:
    from pvcheck.config import ActiveRunsConfig

    lock = tmp_path / "upgrade-all.lock"
    cfg = ActiveRunsConfig(markers=[lock])
    assert active_runs(cfg, FakeSwarm()) == []
    lock.write_text("")
    assert active_runs(cfg, FakeSwarm()) == [f"sweep marker {lock}"]
    builds = active_runs(
        ActiveRunsConfig(),
        FakeSwarm(),
        extra=lambda: ["Drone build 7 running"],
    )
    assert builds == ["Drone build 7 running"]


def test_drone_client_lists_running_builds_only() -> None:
    from pvcheck.config import DroneDriverConfig
    from pvcheck.deploy.drone import DroneClient

    listing = [{"number": 9, "status": "running"}, {"number": 8, "status": "pending"},
               {"number": 7, "status": "success"}, "junk"]  # fmt: skip
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json=listing))
    cfg = DroneDriverConfig(url="http://127.0.0.1:1/", repo="coop-cloud/cc-ci")
    client = DroneClient(cfg, "t", transport)
    assert client.running() == ["Drone build 9 running", "Drone build 8 pending"]


@pytest.mark.parametrize(
    ("service", "stack", "pattern", "expected"),
    [
        ("cust-1a2b3c_ci_commoninternet_net_app", None, CCCI_PATTERN,
         "cust-1a2b3c_ci_commoninternet_net"),
        ("traefik_ci_commoninternet_net_app", None, CCCI_PATTERN, None),
        ("hello_app", "hello", None, "hello"),
        ("hello2_app", "hello", None, None),
        ("anything_app", None, None, None),
    ],
)  # fmt: skip
def test_stack_of_a_service(
    service: str, stack: str | None, pattern: str | None, expected: str | None
) -> None:
    from pvcheck.deploy.attach import stack_of

    assert stack_of(service, stack, pattern) == expected


def test_sampler_finds_the_harness_stack_and_ignores_what_was_there() -> None:
    from pvcheck.deploy.attach import AttachmentSampler, watched_stacks

    swarm = FakeSwarm(network_services=["bonf-000000_ci_commoninternet_net_app"])
    sampler = AttachmentSampler(swarm, "proxy", None, CCCI_PATTERN)
    sampler.sample()  # what runs before the deploy is not the deploy's
    swarm.network_services += ["cust-1a2b3c_ci_commoninternet_net_app", "lab-x_app"]
    sampler.sample()
    assert sampler.stacks == {"cust-1a2b3c_ci_commoninternet_net"}
    assert watched_stacks(None, sampler) == ["cust-1a2b3c_ci_commoninternet_net"]
    assert watched_stacks("cust-1a2b3c_ci_commoninternet_net", sampler) == [
        "cust-1a2b3c_ci_commoninternet_net"
    ]
    # A name the harness reports but that was never seen is not watched (it proves nothing).
    assert watched_stacks("zzzz-999999_ci_commoninternet_net", sampler) == []


def test_results_name_the_stack_by_stack_or_by_domain() -> None:
    from pvcheck.harnessresults import results_stack

    assert results_stack({"domain": "cust-1a2b3c.ci.commoninternet.net"}) == (
        "cust-1a2b3c_ci_commoninternet_net"
    )
    assert results_stack({"stack": "s1", "domain": "x.y"}) == "s1"
    assert results_stack({"stack": "bad name; rm -rf /"}) is None
    assert results_stack({}) is None


def test_a_teardown_check_with_no_stack_to_watch_is_an_error() -> None:
    from pvcheck import deploy

    outcome = DeployOutcome("command", "x", "a stack matching ^x$")
    check = deploy.clean_teardown(deploy.Observation(outcome, None, None, {}, 1.0, 0.0))
    assert check.status == Status.ERROR and check.found == "no stack to watch"
    assert "a stack matching ^x$ was never seen" in check.detail
    assert judge_gate(Gate.M2, [check]).status == Status.FAIL


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_results_path_that_is_not_a_regular_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    import os

    victim = tmp_path / "victim.json"
    victim.write_text('{"stages": []}')
    path = tmp_path / "results.json"
    if kind == "symlink":
        path.symlink_to(victim)
        expected = "symbolic link"
    else:
        os.mkfifo(path)  # reading it would block for ever without a writer
        expected = "FIFO"
    with pytest.raises(ResultsError, match=expected):
        read_results(path)


@pytest.mark.faults
def test_a_repeated_tier_cannot_hide_a_failure_and_install_is_never_not_applicable() -> None:
    doc = {
        "stages": [
            {"name": "install", "status": "fail", "tests": []},
            {"name": "install", "status": "pass", "tests": []},
            {"name": "upgrade", "status": "skip", "reason": "n/a, trust me"},
        ]
    }
    tiers = parse_results(doc).tiers
    assert [(t.tier, t.status) for t in tiers] == [("install", "fail"), ("upgrade", "skip")]
    skipped_install = parse_results(
        {"stages": [{"name": "install", "status": "skip", "reason": "no"}]}
    ).tiers
    assert not skipped_install[0].not_applicable


def test_the_compose_drivers_route_with_check_from_host_is_probed_from_the_host(
    tmp_path: Path,
) -> None:
    """Issue 25: the driver probed its route with httpx from here whatever the route said.
    Through the run's seams, a route with check_from = "host" is a curl on the host."""
    import time

    from pvcheck.deploy.compose import ComposeDriver
    from pvcheck.wiring import HttpProber
    from tests.fakes import FakeHost

    def from_host(raw: dict[str, Any]) -> None:
        raw["deploy"]["compose"]["route"]["check_from"] = "host"
        raw["deploy"]["compose"]["route"]["connect_to"] = "127.0.0.1:9"  # nothing listens

    cfg = load_config(write_config(tmp_path, from_host))
    host = FakeHost()
    seams = replace(fake_seams(), http=HttpProber(cfg.http, host), host=host)
    driver = ComposeDriver(seams, cfg, "pv-1-abc")
    ok, obs = driver._answers(driver.page, time.monotonic())
    assert not ok and obs.status is None
    assert [argv[0] for argv in host.ran] == ["curl"] * obs.attempts
    assert any("http://notes.lab.test/" in argv for argv in host.ran)
