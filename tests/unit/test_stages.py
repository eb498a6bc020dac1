"""Every stage: `judge` on hand-built observations, and its Prefect task on the fakes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
import yaml
from prefect import Task
from prefect.logging import disable_run_logger

from pvcheck import allocator, deploy, facts, guard, logscan, preconditions, routes, teardown
from pvcheck.allocator import AllocatorResult, RoundFigures
from pvcheck.capacity import HeldCount
from pvcheck.config import AllocatorConfig, Config, GuardConfig, RouteConfig, load_config
from pvcheck.guard import Canary, GuardSection
from pvcheck.hostfacts import HostFacts, NetworkFacts, ServiceFacts, parse_network
from pvcheck.logscan import LogScan
from pvcheck.records import VIP_SIGNATURE, Check, Gate, Status
from pvcheck.runs import RunRegistry
from pvcheck.seams import DeployOutcome, RouteObservation, TierResult, TierStatus
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, LABEL_STACK
from pvcheck.tasks.allocator import allocator_proof
from pvcheck.tasks.deploy import deploy_proof, wait_for_quiet_host
from pvcheck.tasks.facts import capture_facts
from pvcheck.tasks.guard import guard_proof
from pvcheck.tasks.logs import scan_docker_log
from pvcheck.tasks.preconditions import check_preconditions
from pvcheck.tasks.routes import check_routes, recheck_core_routes
from pvcheck.tasks.teardown import reap_dead_runs
from pvcheck.tasks.teardown import teardown as teardown_task
from tests.fakes import (
    FakeDriver,
    FakeHost,
    FakeLogSource,
    FakeProber,
    FakeStacks,
    FakeSwarm,
    fake_seams,
)
from tests.helpers import LAB_CONFIG, PVFIX_DONE, ROOT, write_config

P = ParamSpec("P")
R = TypeVar("R")

PASS, FAIL, SKIP, ERROR = Status.PASS, Status.FAIL, Status.SKIP, Status.ERROR
CFG = load_config(LAB_CONFIG)
RUN_ID, OTHER_RUN = "pv-20260101000000-abcdef", "pv-20251231000000-123456"
SINCE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(hours=1)
GUARD_FILES = [
    ROOT / "lab" / "upgrade-all" / "SKILL.md",
    ROOT / "lab" / "cc-ci-twin" / "upgrade-all" / "SKILL.md",
]
VIP_GREP = ["grep", "-c", "available IP while allocating VIP"]


# --- helpers ---------------------------------------------------------------------------------
def run_task(task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """A task's function on its own, as Prefect documents unit-testing one."""
    with disable_run_logger():
        return task.fn(*args, **kwargs)


def statuses(checks: list[Check]) -> dict[str, Status]:
    return {c.id: c.status for c in checks}


def gates(checks: list[Check]) -> set[Gate]:
    return {c.gate for c in checks}


def network_inspect(subnet: str = CFG.network.subnet, **services: int) -> dict[str, Any]:
    """`docker network inspect --verbose` of the lab overlay: per service a VIP and n task IPs
    (default: one service with one task, 2 endpoints)."""
    services = services or {"traefik_app": 1}
    return {
        "Name": CFG.network.name,
        "Driver": "overlay",
        "IPAM": {"Config": [{"Subnet": subnet}]},
        "Services": {
            name: {
                "VIP": "10.10.0.2",
                "Tasks": [{"Name": f"{name}.{i}", "EndpointIP": "10.10.0.9"} for i in range(n)],
            }
            for name, n in services.items()
        },
    }


def network(subnet: str = CFG.network.subnet, **services: int) -> NetworkFacts:
    return parse_network(network_inspect(subnet, **services))


def service(
    name: str, running: int = 1, desired: int = 1, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "ID": f"id-{name}",
        "Spec": {"Name": name, "Labels": labels or {}},
        "ServiceStatus": {"RunningTasks": running, "DesiredTasks": desired},
    }


def labelled(run_id: str, name: str, state: str = "exited") -> dict[str, list[dict[str, Any]]]:
    """One object of each non-service kind carrying a run's label."""
    labels = {LABEL_RUN: run_id}
    return {
        "networks": [{"Id": f"net-{name}", "Name": f"{name}_net", "Labels": labels}],
        "containers": [
            {"Id": f"ctr-{name}", "Names": [f"/{name}_app.1"], "State": state, "Labels": labels}
        ],
        "volumes": [{"Name": f"{name}_data", "Labels": labels}],
        "configs": [{"ID": f"cfg-{name}", "Spec": {"Name": f"{name}_cfg"}, "Labels": labels}],
        "secrets": [{"ID": f"sec-{name}", "Spec": {"Name": f"{name}_sec"}, "Labels": labels}],
    }


def removed_ids(name: str) -> set[str]:
    return {f"net-{name}", f"ctr-{name}", f"{name}_data", f"cfg-{name}", f"sec-{name}"}


def both(
    a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    return {kind: a[kind] + b[kind] for kind in a}


def lab_config(tmp_path: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> Config:
    return load_config(write_config(tmp_path, mutate))


def deploy_settings(cfg: Config = CFG) -> deploy.Settings:
    settings = deploy.Settings.from_config(cfg)
    assert settings is not None
    return settings


DEPLOY = deploy_settings()


def outcome(tiers: list[TierResult] | None = None, **changes: Any) -> DeployOutcome:
    """The app deployed as stack app1, attached, every configured tier passed."""
    passed = [TierResult(t, TierStatus.PASS) for t in DEPLOY.deploy.tiers]
    seen = DeployOutcome(
        "compose",
        "hello",
        "app1",
        tiers=passed if tiers is None else tiers,
        stacks=["app1"],
        attached=True,
        attach_detail="app1_app seen on proxy",
    )
    return dataclasses.replace(seen, **changes)


def deploy_checks(want: Status) -> dict[str, Status]:
    tiers = {f"deploy.tier.{t}": want for t in DEPLOY.deploy.tiers}
    return {"deploy.attached": want, **tiers, "deploy.teardown": want}


# --- preconditions ---------------------------------------------------------------------------
PRE = preconditions.Settings.from_config(CFG)


def test_preconditions_judge_passes_a_done_phase_on_the_configured_network() -> None:
    obs = preconditions.Observation(True, network(), done_s=0.01, network_s=0.02)
    checks = preconditions.judge(obs, PRE)
    assert statuses(checks) == {"pre.pvfix-done": PASS, "pre.network": PASS}
    assert gates(checks) == {Gate.M1}
    assert [c.duration_s for c in checks] == [0.01, 0.02]


@pytest.mark.parametrize(("done", "found"), [(None, "file missing"), (False, "no ## DONE line")])
def test_preconditions_judge_fails_an_unfinished_phase_and_a_wrong_network(
    done: bool | None, found: str
) -> None:
    obs = preconditions.Observation(done, network("10.99.0.0/16"), done_s=0.01, network_s=0.02)
    phase, net = preconditions.judge(obs, PRE)
    assert (phase.status, phase.found, phase.duration_s) == (FAIL, found, 0.01)
    assert (net.status, net.duration_s) == (FAIL, 0.02)
    assert net.detail == f"expected subnet {CFG.network.subnet}, found 10.99.0.0/16"


@pytest.mark.parametrize(
    ("text", "status"),
    [(PVFIX_DONE, PASS), ("# STATUS — pvfix\n\nstill going\n", FAIL), (None, FAIL)],
    ids=["done", "not-done", "missing"],
)
def test_preconditions_task_reads_the_status_file_and_the_network(
    tmp_path: Path, text: str | None, status: Status
) -> None:
    settings = preconditions.Settings.from_config(lab_config(tmp_path))
    if text is None:
        settings.status_file.unlink()
    else:
        settings.status_file.write_text(text, encoding="utf-8")
    seams = fake_seams(FakeSwarm(inspect=network_inspect()))
    checks = run_task(check_preconditions, seams, settings)
    assert statuses(checks) == {"pre.pvfix-done": status, "pre.network": PASS}
    assert all(c.duration_s > 0 for c in checks)


def test_preconditions_task_fails_without_the_network(tmp_path: Path) -> None:
    settings = preconditions.Settings.from_config(lab_config(tmp_path))
    checks = run_task(
        check_preconditions, fake_seams(FakeSwarm(inspect={"Name": "other"})), settings
    )
    assert statuses(checks) == {"pre.pvfix-done": PASS, "pre.network": FAIL}
    assert checks[1].found == "network missing"


# --- facts -----------------------------------------------------------------------------------
FACTS = facts.Settings.from_config(CFG)
CONTROL = CFG.services.control_plane


def host_facts(net: NetworkFacts | None, down: str = "") -> HostFacts:
    services = [ServiceFacts(name, exists=name != down, running=1, desired=1) for name in CONTROL]
    return HostFacts("2026-01-01T12:00:00Z", net, services, {"lab-traefik": 1})


def test_facts_judge_checks_each_service_and_the_headroom() -> None:
    checks = facts.judge(facts.Observation(facts.BEFORE, host_facts(network()), 0.4, 3), FACTS)
    assert statuses(checks) == {**{f"svc.{n}": PASS for n in CONTROL}, "facts.headroom": PASS}
    assert gates(checks) == {Gate.M1}
    assert {c.duration_s for c in checks} == {0.4}


def test_facts_judge_fails_a_missing_service_and_a_full_network() -> None:
    full = network("10.10.0.0/29", a_app=1, b_app=1)  # 4 of 5 addresses used
    obs = facts.Observation(facts.BEFORE, host_facts(full, down=CONTROL[0]), 0.4, 3)
    checks = {c.id: c for c in facts.judge(obs, FACTS)}
    assert checks[f"svc.{CONTROL[0]}"].status == FAIL
    assert checks[f"svc.{CONTROL[0]}"].detail == f"service {CONTROL[0]} does not exist"
    assert checks["facts.headroom"].status == FAIL
    assert checks["facts.headroom"].found == "4/5 used, headroom 20.00%"


def test_facts_judge_skips_the_headroom_of_a_missing_network_and_after_the_run() -> None:
    before = facts.judge(facts.Observation(facts.BEFORE, host_facts(None), 0.4, 3), FACTS)
    assert statuses(before)["facts.headroom"] == SKIP
    after = facts.judge(facts.Observation(facts.AFTER, host_facts(network()), 0.4, 3), FACTS)
    assert statuses(after) == {f"svc.{n}.after": PASS for n in CONTROL}


def test_facts_task_reads_the_network_and_the_control_plane() -> None:
    down = CONTROL[-1]
    services = [service(n, running=0 if n == down else 1) for n in CONTROL]
    seams = fake_seams(FakeSwarm(inspect=network_inspect(), services=services))
    obs, checks = run_task(capture_facts, seams, FACTS)
    want = {f"svc.{n}": FAIL if n == down else PASS for n in CONTROL}
    assert statuses(checks) == {**want, "facts.headroom": PASS}
    assert obs.requests == 3 and obs.facts.network is not None and obs.facts.network.used == 2
    assert obs.seconds > 0 and {c.duration_s for c in checks} == {obs.seconds}


# --- routes ----------------------------------------------------------------------------------
def route(name: str, core: bool = True, **changes: Any) -> RouteConfig:
    return RouteConfig(name=name, url=f"http://{name}.lab.test/", core=core, **changes)


def probe(name: str, status: int | None, body: bool | None = None) -> RouteObservation:
    error = None if status else "ConnectError: refused"
    return RouteObservation(name, f"http://{name}.lab.test/", status, body, 0.25, 2, error)


def test_routes_judge_passes_an_expected_answer_and_fails_the_rest() -> None:
    settings = routes.Settings(
        [route("ok"), route("body", body_contains="hello"), route("down"), route("wrong")]
    )
    probes = [probe("ok", 200), probe("body", 200, False), probe("down", None), probe("wrong", 502)]
    checks = routes.judge(probes, settings)
    assert statuses(checks) == {
        "route.ok": PASS,
        "route.body": FAIL,
        "route.down": FAIL,
        "route.wrong": FAIL,
    }
    assert [c.found for c in checks[1:]] == [
        "HTTP 200, body text missing",
        "ConnectError: refused",
        "HTTP 502",
    ]
    assert gates(checks) == {Gate.M1} and {c.duration_s for c in checks} == {0.25}


def test_routes_recheck_judge_fails_when_a_core_route_is_down() -> None:
    up = Check("route.a", Gate.M1, PASS, "HTTP 200", "HTTP 200", duration_s=0.1)
    down = dataclasses.replace(up, id="route.b", status=FAIL, found="HTTP 502", duration_s=0.3)
    ok = routes.routes_still_up("deploy", [up, up])
    assert (ok.id, ok.status, ok.found, ok.duration_s) == (
        "route.recheck-deploy",
        PASS,
        "2 core route(s) answer",
        0.1,
    )
    bad = routes.routes_still_up("deploy", [up, down])
    assert (bad.status, bad.found, bad.duration_s) == (FAIL, "route.b: HTTP 502", 0.3)


def test_routes_task_probes_every_configured_route() -> None:
    settings = routes.Settings.from_config(CFG)
    answers = {"drone-ui": 303, "drone-health": 200, "dashboard": 502, "bridge-health": 200}
    prober = FakeProber(answers | {"traefik-api": 200})  # reports: no answer
    checks = run_task(check_routes, fake_seams(http=prober), settings)
    assert statuses(checks) == {
        "route.drone-ui": PASS,
        "route.drone-health": PASS,
        "route.dashboard": FAIL,
        "route.bridge-health": PASS,
        "route.reports": FAIL,
        "route.traefik-api": PASS,
    }
    assert prober.asked == [r.name for r in CFG.routes]
    assert all(c.duration_s > 0 for c in checks)


@pytest.mark.parametrize(("answers", "status"), [({"core": 200}, PASS), ({"core": 503}, FAIL)])
def test_routes_recheck_task_probes_only_the_core_routes(
    answers: dict[str, int], status: Status
) -> None:
    prober = FakeProber(answers)
    settings = routes.Settings([route("core"), route("extra", core=False)])
    check = run_task(recheck_core_routes, fake_seams(http=prober), settings, "allocator")
    assert (check.id, check.status, check.gate) == ("route.recheck-allocator", status, Gate.M1)
    assert prober.asked == ["core"] and check.duration_s > 0


# --- deploy ----------------------------------------------------------------------------------
def test_deploy_quiet_judge_passes_an_idle_host_and_skips_a_busy_one() -> None:
    idle = deploy.judge_quiet(deploy.Quiet([], 0.4))
    assert (idle.id, idle.gate, idle.status, idle.duration_s) == (
        "deploy.active",
        Gate.M2,
        PASS,
        0.4,
    )
    busy = deploy.judge_quiet(deploy.Quiet(["build 7 running"], 1.5))
    assert (busy.status, busy.found, busy.duration_s) == (SKIP, "busy", 1.5)
    assert busy.detail == "another run or sweep is active (build 7 running)"


def test_deploy_judge_passes_a_clean_deploy() -> None:
    obs = deploy.Observation(outcome(), network(), network(), {}, deploy_s=2.5, teardown_s=0.5)
    checks = deploy.judge(obs, DEPLOY)
    assert statuses(checks) == deploy_checks(PASS)
    assert gates(checks) == {Gate.M2}
    assert [c.duration_s for c in checks] == [2.5] * (len(checks) - 1) + [0.5]


def test_deploy_judge_fails_bad_tiers_a_detached_app_and_a_leaky_teardown() -> None:
    tiers = [
        TierResult("install", TierStatus.FAIL),
        TierResult("backup_restore", TierStatus.UNVERIFIED),
    ]
    after = network(traefik_app=1, app1_app=1)
    obs = deploy.Observation(
        outcome(tiers, attached=False),
        network(traefik_app=1),
        after,
        {"services": ["app1_app"]},
        2.5,
        0.5,
    )
    checks = {c.id: c for c in deploy.judge(obs, DEPLOY)}
    assert statuses(list(checks.values())) == deploy_checks(FAIL)
    assert checks["deploy.tier.upgrade"].found == "not reported"
    assert checks["deploy.teardown"].found.startswith("1 objects left (service app1_app)")
    assert (
        checks["deploy.teardown"].detail == "2 endpoint(s) not released after the app was removed"
    )


def test_deploy_judge_reports_a_driver_error_and_nothing_to_watch_as_errors() -> None:
    broken = outcome([], stacks=[], attached=False, error="compose exited 1")
    checks = deploy.judge(deploy.Observation(broken, network(), None, {}, 3.0, 0.0), DEPLOY)
    by_id = statuses(checks)
    assert by_id["deploy.driver"] == ERROR and by_id["deploy.teardown"] == ERROR
    assert {c.duration_s for c in checks} == {3.0}


def test_deploy_task_drives_the_deploy_and_checks_its_teardown() -> None:
    driver = FakeDriver(outcome())
    seams = fake_seams(FakeSwarm(inspect=network_inspect()), driver=driver)
    checks, stacks = run_task(deploy_proof, seams, DEPLOY)
    assert statuses(checks) == deploy_checks(PASS)
    assert driver.runs == 1
    assert stacks == outcome().stacks and stacks
    assert checks[-1].found.startswith("0 objects left; endpoints 2: 0 still the app's")
    assert all(c.duration_s > 0 for c in checks)


def test_deploy_task_fails_the_teardown_of_a_stack_left_behind() -> None:
    left = service("app1_app", labels={LABEL_STACK: "app1"})
    swarm = FakeSwarm(inspect=network_inspect(traefik_app=1, app1_app=1), services=[left])
    seams = fake_seams(swarm, driver=FakeDriver(outcome()))
    settings = dataclasses.replace(DEPLOY, settle_timeout_s=0.1)
    check = run_task(deploy_proof, seams, settings)[0][-1]
    assert (check.id, check.status) == ("deploy.teardown", FAIL)
    assert check.found.startswith(
        "1 objects left (service app1_app); endpoints 4: 2 still the app's"
    )


@pytest.mark.parametrize(("busy", "status"), [([], PASS), (["build 7 running"], SKIP)])
def test_deploy_quiet_task_waits_for_other_runs(
    tmp_path: Path, busy: list[str], status: Status
) -> None:
    def no_wait(raw: dict[str, Any]) -> None:
        raw["deploy"]["active_runs"].update(wait_s=0, folder=str(tmp_path / "active"))

    settings = deploy_settings(lab_config(tmp_path, no_wait))
    seams = fake_seams(driver=FakeDriver(outcome(), busy=busy))
    check = run_task(wait_for_quiet_host, seams, settings)
    assert (check.id, check.status) == ("deploy.active", status)
    assert all(b in check.detail for b in busy) and check.duration_s > 0


# --- allocator -------------------------------------------------------------------------------
ALLOC = allocator.Settings.from_config(CFG, RUN_ID)


def figures(
    leaked: int = 0, allocated: bool = True, seconds: float = 1.5, left: list[str] | None = None
) -> RoundFigures:
    counts = dict.fromkeys(allocator.KINDS, 0)
    errors = [f"docker stack rm: network {n} has active endpoints" for n in left or []]
    return RoundFigures(
        1,
        5,
        counts,
        counts,
        counts,
        allocated,
        True,
        seconds,
        leaked,
        networks_orphaned=left or [],
        networks_left=left or [],
        rm_errors=errors,
    )


def result(*rounds: RoundFigures, capacity: int = 65533, used: int = 10) -> AllocatorResult:
    used_after = used + sum(r.leaked_total for r in rounds)
    return AllocatorResult("proxy", capacity, used, used_after, SINCE, UNTIL, list(rounds))


def test_allocator_judge_passes_rounds_without_a_leak() -> None:
    obs = allocator.Observation(None, result(figures(seconds=1.5), figures(1, seconds=2.0)))
    checks = allocator.judge(obs, ALLOC)
    assert statuses(checks) == {
        "alloc.allocated": PASS,
        "alloc.leak": PASS,
        "alloc.networks": PASS,
        "alloc.headroom": PASS,
        "alloc.forecast": PASS,
    }
    # Every check judges the whole reproduction: its time, from start to finish.
    whole = (UNTIL - SINCE).total_seconds()
    assert gates(checks) == {Gate.M2} and {c.duration_s for c in checks} == {whole} and whole > 0


def test_allocator_judge_fails_stuck_tasks_a_leak_and_low_headroom() -> None:
    stuck = figures(5, allocated=False, left=["pvc-alloc-abcdef-r1-3_internal"])
    res = result(stuck, capacity=20)
    # The engine's own count on the shared network: 5 more held, no endpoint explains them.
    res.shared_before = HeldCount("proxy", 20, 10, 10, True, "ipam-status")
    res.shared_after = HeldCount("proxy", 20, 10, 5, True, "ipam-status")
    res.scratch_count = HeldCount("pvc-scratch-abcdef", 253, 0, 248, True, "fill-probe")
    res.removals_per_day = 20
    checks = {c.id: c for c in allocator.judge(allocator.Observation(None, res), ALLOC)}
    assert statuses(list(checks.values())) == {
        "alloc.allocated": FAIL,
        "alloc.leak": FAIL,
        "alloc.networks": FAIL,
        "alloc.headroom": FAIL,
        "alloc.forecast": FAIL,
    }
    # A stack network left behind is residue, named, with what `docker stack rm` said.
    assert checks["alloc.networks"].found == (
        "5 stack networks created; docker stack rm left 1 in use "
        "(pvc-alloc-abcdef-r1-3_internal); left: pvc-alloc-abcdef-r1-3_internal"
    )
    assert "has active endpoints" in checks["alloc.networks"].detail
    assert checks["alloc.leak"].found.startswith("proxy: 5 address(es) left by the run; ")
    assert "5 address(es) held after 5 removed task(s), 1.00 per removal" in (
        checks["alloc.leak"].found
    )
    assert checks["alloc.headroom"].found.startswith("50.000% before, 25.000% after")
    # 5 free at 1 per removal and 20 removals a day: gone in a quarter of a day.
    assert checks["alloc.forecast"].found.startswith("proxy: 0 days (5 free, 20.00 leaked a day)")


def test_allocator_judge_skips_a_refused_reproduction() -> None:
    (check,) = allocator.judge(allocator.Observation("the overlay network is missing", None), ALLOC)
    assert (check.id, check.gate, check.status) == ("alloc.stage", Gate.M2, SKIP)
    assert check.detail == "refused: the overlay network is missing"


def test_allocator_task_refuses_below_the_headroom_floor() -> None:
    swarm = FakeSwarm(inspect=network_inspect("10.10.0.0/29", traefik_app=2))  # 3 of 5 used
    stacks = FakeStacks()
    obs, checks = run_task(allocator_proof, fake_seams(swarm, stacks=stacks), ALLOC)
    assert obs.refused is not None and obs.refused.startswith(
        "headroom 40.00% is below the floor 50%"
    )
    assert statuses(checks) == {"alloc.stage": SKIP}
    assert stacks.deployed == {} and stacks.removed == [] and swarm.removed == []


def test_allocator_task_runs_labelled_throwaways_and_removes_them() -> None:
    labels = {LABEL_RUN: RUN_ID, LABEL_ROLE: "throwaway"}
    names = ["pvc-alloc-abcdef-r1-1", "pvc-alloc-abcdef-r1-2"]
    swarm = FakeSwarm(
        inspect=network_inspect(), services=[service(n, labels=labels) for n in names]
    )
    stacks = FakeStacks()
    settings = allocator.Settings(
        AllocatorConfig(batch=2, concurrency=2, settle_timeout_s=1), "proxy", RUN_ID
    )
    obs, checks = run_task(allocator_proof, fake_seams(swarm, stacks=stacks), settings)
    assert statuses(checks) == {
        "alloc.allocated": PASS,
        "alloc.leak": PASS,
        "alloc.networks": PASS,
        "alloc.headroom": PASS,
        "alloc.forecast": PASS,
    }
    # Each throwaway is its own stack, deployed and removed with `docker stack rm`; its
    # compose carries the run labels on the service and on its own network. The shared
    # network it joins is the run's scratch overlay, never the real one, and no port is
    # published (ingress is not touched).
    assert sorted(stacks.deployed) == names and sorted(stacks.removed) == names
    for compose in stacks.deployed.values():
        doc = yaml.safe_load(compose)
        assert doc["services"]["app"]["deploy"]["labels"].items() >= labels.items()
        assert doc["networks"]["internal"]["labels"] == labels
        assert doc["networks"]["proxy"] == {"external": True, "name": "pvc-scratch-abcdef"}
        assert "ports" not in doc["services"]["app"]
        assert doc["services"]["app"]["stop_grace_period"] == "10s"
    # The scratch network was made with the configured subnet and the run label, then removed.
    assert obs.result is not None and obs.result.scratch == "pvc-scratch-abcdef"
    assert "net-pvc-scratch-abcdef" in swarm.removed
    assert obs.result is not None
    whole = (obs.result.finished_at - obs.result.started_at).total_seconds()
    assert whole > 0 and all(c.duration_s == whole for c in checks)


# --- logs ------------------------------------------------------------------------------------
LOGS = logscan.Settings.window(CFG, "logs.fresh-run", "this run", SINCE, UNTIL)
VIP_MSG = f'Failed allocation for service x7" error="{VIP_SIGNATURE}'


def log_line(minutes: int, msg: str) -> str:
    """A dockerd line `minutes` after the window opens."""
    return (
        f'time="{SINCE + timedelta(minutes=minutes):%Y-%m-%dT%H:%M:%S}.5Z" level=error msg="{msg}"'
    )


def scan(vip: int = 0, error: str | None = None) -> LogScan:
    counts = dict.fromkeys(logscan.error_family("proxy"), 0) | {"vip_exhausted": vip}
    lines = [log_line(5, VIP_MSG)] * vip
    return LogScan(
        "fake docker log",
        "2026-01-01T12:00:00Z",
        "2026-01-01T13:00:00Z",
        counts,
        lines,
        error=error,
    )


@pytest.mark.parametrize(
    ("log", "status"), [(scan(), PASS), (scan(vip=2), FAIL), (scan(error="gone"), ERROR)]
)
def test_logs_judge_fails_the_vip_line_and_errors_on_an_unread_log(
    log: LogScan, status: Status
) -> None:
    (check,) = logscan.judge(logscan.Observation(log, 0.25), LOGS)
    assert (check.id, check.gate, check.status, check.duration_s) == (
        "logs.fresh-run",
        Gate.M2,
        status,
        0.25,
    )
    assert ("; first: " in check.detail) == (status == FAIL)


@pytest.mark.parametrize(
    ("logs", "status"),
    [
        (FakeLogSource([log_line(10, "Loading containers: done."), log_line(-30, VIP_MSG)]), PASS),
        (
            FakeLogSource([log_line(10, VIP_MSG), log_line(-30, VIP_MSG), log_line(90, VIP_MSG)]),
            FAIL,
        ),
        (FakeLogSource(unreadable="journalctl exited 1: no journal"), ERROR),
    ],
    ids=["clean", "vip-in-window", "unreadable"],
)
def test_logs_task_scans_only_the_window(logs: FakeLogSource, status: Status) -> None:
    obs, (check,) = run_task(scan_docker_log, fake_seams(logs=logs), LOGS)
    assert (check.id, check.status) == ("logs.fresh-run", status)
    assert obs.scan.vip_count == (1 if status == FAIL else 0)
    assert (obs.scan.error == logs.unreadable) and check.duration_s == obs.seconds > 0
    if logs.unreadable:
        assert check.detail == f"source fake docker log: {logs.unreadable}"


# --- guard -----------------------------------------------------------------------------------
GUARD = guard.Settings(GuardConfig(file=GUARD_FILES[0]))
GUARDED = guard.Observation(
    "SKILL.md",
    section=GuardSection("0. Step-0 guard", 5, "..."),
    argv=VIP_GREP,
    hit=1,
    clean=0,
    recovery="systemctl restart docker",
    seconds=0.3,
)
ALL_PASS = {"guard.section": PASS, "guard.detects": PASS, "guard.recovery": PASS}


@pytest.mark.parametrize(
    ("changes", "want"),
    [
        ({}, ALL_PASS),
        ({"clean": 1}, ALL_PASS | {"guard.detects": FAIL}),
        ({"hit": None}, ALL_PASS | {"guard.detects": FAIL}),
        ({"argv": None}, ALL_PASS | {"guard.detects": FAIL}),
        ({"recovery": None}, ALL_PASS | {"guard.recovery": FAIL}),
        ({"section": None}, {"guard.section": FAIL}),
        ({"missing": True}, {"guard.section": FAIL}),
        ({"read_error": "a FIFO, not read"}, {"guard.section": ERROR}),
    ],
)
def test_guard_judge(changes: dict[str, Any], want: dict[str, Status]) -> None:
    checks = guard.judge(dataclasses.replace(GUARDED, **changes), GUARD)
    assert statuses(checks) == want
    assert gates(checks) == {Gate.M2} and {c.duration_s for c in checks} == {0.3}


@pytest.mark.parametrize(
    ("canary", "status", "seconds"),
    [
        (Canary(count=2, since="12:00:00Z", network="pvc-canary-abcdef", seconds=4.0), PASS, 4.0),
        (Canary(count=0, seconds=4.0), FAIL, 4.0),
        (Canary(unavailable="no detection command to run"), SKIP, 0.0),
        (Canary(refused="not the built-in lab's engine"), ERROR, 0.0),
    ],
)
def test_guard_judge_canary(canary: Canary, status: Status, seconds: float) -> None:
    check = guard.judge(dataclasses.replace(GUARDED, canary=canary), GUARD)[-1]
    assert (check.id, check.status, check.duration_s) == ("guard.canary", status, seconds)


@pytest.mark.parametrize("path", GUARD_FILES, ids=["lab", "cc-ci-twin"])
def test_guard_task_runs_the_real_step0_detection_on_the_host(path: Path) -> None:
    host = FakeHost()
    checks = run_task(guard_proof, fake_seams(host=host), guard.Settings(GuardConfig(file=path)))
    assert statuses(checks) == ALL_PASS
    assert host.ran == [VIP_GREP]
    assert all(c.duration_s > 0 for c in checks)


def test_guard_task_refuses_the_canary_off_the_lab_engine() -> None:
    settings = guard.Settings(
        GuardConfig(file=GUARD_FILES[0]),
        True,
        RUN_ID,
        "local/busybox:1",
        CFG.target.docker_host,
        "proxy",
    )
    swarm = FakeSwarm(inspect=network_inspect())  # no pvcheck.lab=1 label
    checks = run_task(guard_proof, fake_seams(swarm), settings)
    assert statuses(checks) == ALL_PASS | {"guard.canary": ERROR}
    assert (
        checks[-1].detail == "proxy on this engine was not made by the lab (no pvcheck.lab=1 label)"
    )
    assert swarm.removed == []


# --- teardown and the janitor ----------------------------------------------------------------
TEARDOWN = teardown.Settings(RUN_ID)


@pytest.mark.parametrize(
    ("obs", "status", "found"),
    [
        (teardown.Observation({"services": []}, 0.3), PASS, "0 left"),
        (
            teardown.Observation({"services": ["x_app"], "networks": ["x_net"]}, 0.3),
            FAIL,
            "2 left: service x_app, network x_net",
        ),
        (
            teardown.Observation({}, 0.0, "ssh: connection lost"),
            ERROR,
            "not checked: ssh: connection lost",
        ),
    ],
)
def test_teardown_judge(obs: teardown.Observation, status: Status, found: str) -> None:
    (check,) = teardown.judge(obs, TEARDOWN)
    assert (check.id, check.gate, check.status, check.found) == (
        "teardown.residue",
        Gate.M2,
        status,
        found,
    )
    assert check.duration_s == obs.seconds


@pytest.mark.parametrize(
    ("left", "status"), [({"services": [], "networks": []}, PASS), ({"networks": ["x_net"]}, FAIL)]
)
def test_janitor_judge(left: dict[str, list[str]], status: Status) -> None:
    check = teardown.judge_janitor(teardown.Reaped({OTHER_RUN: left}, 0.2))
    assert (check.id, check.gate, check.status, check.duration_s) == (
        "teardown.janitor",
        Gate.M2,
        status,
        0.2,
    )
    assert check.found.startswith(f"reaped 1 dead run(s): {OTHER_RUN}")


def test_teardown_task_removes_this_runs_objects_only() -> None:
    ours = service("x_app", labels={LABEL_RUN: RUN_ID})
    swarm = FakeSwarm(
        services=[ours], labelled=both(labelled(RUN_ID, "mine"), labelled(OTHER_RUN, "theirs"))
    )
    checks = run_task(teardown_task, fake_seams(swarm), TEARDOWN)
    assert statuses(checks) == {"teardown.residue": PASS}
    assert set(swarm.removed) == removed_ids("mine") | {"id-x_app"}
    assert all(len(objects) == 1 for objects in swarm.labelled.values())  # theirs is left
    assert checks[0].duration_s > 0


def test_teardown_task_fails_on_a_container_still_running() -> None:
    swarm = FakeSwarm(labelled=labelled(RUN_ID, "mine", state="running"))
    (check,) = run_task(teardown_task, fake_seams(swarm), teardown.Settings(RUN_ID, timeout_s=0))
    assert check.status == FAIL and check.found == "1 left: container mine_app.1"
    assert "ctr-mine" not in swarm.removed


def test_janitor_task_reaps_dead_runs_and_spares_live_ones(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path, CFG.target.docker_host)
    live = registry.start(RUN_ID)
    dead = dataclasses.replace(live, run_id=OTHER_RUN, proc_start="gone")  # pid reused: dead
    (registry.dir / f"{OTHER_RUN}.json").write_text(json.dumps(dataclasses.asdict(dead)))
    swarm = FakeSwarm(labelled=both(labelled(RUN_ID, "live"), labelled(OTHER_RUN, "dead")))
    check = run_task(reap_dead_runs, fake_seams(swarm), registry, 0)
    assert (check.id, check.status) == ("teardown.janitor", PASS)
    assert check.found == f"reaped 1 dead run(s): {OTHER_RUN}"
    assert set(swarm.removed) == removed_ids("dead")
    assert [r.run_id for r in registry.records()] == [RUN_ID]
    assert check.duration_s > 0
