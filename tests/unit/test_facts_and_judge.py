"""Pure parsing of docker answers and pure judging of facts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pvcheck import facts, preconditions, routes
from pvcheck.config import NetworkConfig, RouteConfig
from pvcheck.hostfacts import (
    NetworkFacts,
    overlay_capacity,
    parse_network,
    parse_services,
    parse_stacks,
    settle_network,
)
from pvcheck.records import Check, Gate, Status, Verdict, judge_gate, verdict
from pvcheck.records import unproven as unproven_text
from pvcheck.seams import RouteObservation
from pvcheck.stacks import ServiceState, converged, stack_task_states

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def inspect_doc(subnet: str = "10.20.0.0/16") -> dict[str, Any]:
    return {
        "Name": "proxy",
        "Driver": "overlay",
        "IPAM": {"Config": [{"Subnet": subnet, "Gateway": "10.20.0.1"}]},
        "Containers": {
            "c1": {"Name": "a_app.1.x"},
            "c2": {"Name": "b_app.1.y"},
            "c3": {"Name": "debug-shell"},
            "lb-proxy": {"Name": "proxy-endpoint"},
        },
        "Services": {
            "a_app": {
                "VIP": "10.20.0.2",
                "Tasks": [{"Name": "a_app.1.x", "EndpointIP": "10.20.0.9"}],
            },
            "b_app": {
                "VIP": "10.20.0.4",
                "Tasks": [
                    {"Name": "b_app.1.y", "EndpointIP": "10.20.0.10"},
                    {"Name": "b_app.2.z", "EndpointIP": "10.20.0.11"},
                ],
            },
            "dnsrr_app": {
                "VIP": "",
                "Tasks": [{"Name": "dnsrr_app.1.q", "EndpointIP": "10.20.0.12"}],
            },
        },
    }


@pytest.mark.parametrize(("subnet", "cap"), [("10.0.1.0/24", 253), ("10.10.0.0/16", 65533)])
def test_capacity_matches_ip_util_check(subnet: str, cap: int) -> None:
    assert overlay_capacity(subnet) == cap


def test_parse_network_splits_endpoints() -> None:
    net = parse_network(inspect_doc())
    assert (net.vips, net.task_ips, net.lb_endpoints, net.containers) == (2, 4, 1, 1)
    assert net.used == 8
    assert net.capacity == 65533
    assert net.headroom_pct == pytest.approx(100 * (65533 - 8) / 65533)
    assert net.services == ["a_app", "b_app", "dnsrr_app"]
    assert "8 endpoints: 2 VIPs, 4 task IPs" in net.summary()


def _svc(name: str, sid: str, running: int, desired: int, stack: str = "s") -> dict[str, Any]:
    return {
        "ID": sid,
        "Spec": {"Name": name, "Labels": {"com.docker.stack.namespace": stack}},
        "ServiceStatus": {"RunningTasks": running, "DesiredTasks": desired},
    }


def _task(sid: str, state: str, desired: str, when: datetime) -> dict[str, Any]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    return {
        "ServiceID": sid,
        "DesiredState": desired,
        "Status": {"State": state, "Timestamp": stamp},
    }


def test_parse_services_counts_replicas_states_and_recent_failures() -> None:
    services = [_svc("traefik_app", "t", 1, 1, "traefik"), _svc("drone_app", "d", 0, 1, "drone")]
    tasks = [
        _task("t", "running", "running", NOW),
        _task("t", "failed", "shutdown", NOW - timedelta(hours=1)),
        _task("t", "failed", "shutdown", NOW - timedelta(hours=30)),  # outside the window
        _task("d", "pending", "running", NOW),
    ]
    facts = parse_services(
        ["traefik_app", "drone_app", "gone_app"], services, tasks, NOW, timedelta(hours=24)
    )
    traefik, drone, gone = facts
    assert traefik.healthy and traefik.restarts == 1 and traefik.task_states == {"running": 1}
    assert not drone.healthy and drone.task_states == {"pending": 1}
    assert not gone.exists and not gone.healthy
    assert parse_stacks(services) == {"drone": 1, "traefik": 1}


def test_network_check_names_expected_and_found_subnet() -> None:
    cfg = NetworkConfig(name="proxy", subnet="10.30.0.0/16")
    check = preconditions.network_matches(cfg, parse_network(inspect_doc()))
    assert check.status == Status.FAIL
    assert "10.30.0.0/16" in check.expected and "10.20.0.0/16" in check.found
    assert check.detail == "expected subnet 10.30.0.0/16, found 10.20.0.0/16"
    assert preconditions.network_matches(cfg, None).found == "network missing"
    ok = preconditions.network_matches(
        NetworkConfig(name="proxy", subnet="10.20.0.0/16"), parse_network(inspect_doc())
    )
    assert ok.status == Status.PASS


@pytest.mark.faults
def test_route_judgement() -> None:
    route = RouteConfig(name="drone", url="https://d.test/", expect_status=[303], verify_tls=False)
    good = routes.route_answer(route, RouteObservation("drone", route.url, 303, None, 0.01, 1))
    assert good.status == Status.PASS and "TLS verification OFF" in good.detail
    assert "TLS verification OFF" in good.expected
    bad = routes.route_answer(route, RouteObservation("drone", route.url, 502, None, 0.01, 3))
    assert bad.status == Status.FAIL and "route drone" in bad.detail and bad.found == "HTTP 502"
    down = routes.route_answer(
        route, RouteObservation("drone", route.url, None, None, 5, 3, "no answer within 5s")
    )
    assert down.found == "no answer within 5s"
    body = RouteConfig(name="x", url="http://x.test/", body_contains="ok")
    missing = routes.route_answer(body, RouteObservation("x", body.url, 200, False, 0.1, 1))
    assert missing.status == Status.FAIL and "body text missing" in missing.found


def test_headroom_threshold() -> None:
    tiny = parse_network(inspect_doc("10.99.0.0/28"))  # 13 usable, 8 used
    assert facts.headroom(tiny, 50).status == Status.FAIL
    assert facts.headroom(parse_network(inspect_doc()), 25).status == Status.PASS


def _c(cid: str, gate: Gate, status: Status) -> Check:
    return Check(cid, gate, status, "e", "f")


def test_gate_needs_every_required_family_and_no_skip() -> None:
    m1 = [
        _c("pre.x", Gate.M1, Status.PASS),
        _c("svc.a", Gate.M1, Status.PASS),
        _c("route.r", Gate.M1, Status.PASS),
    ]
    assert judge_gate(Gate.M1, m1).status == Status.PASS
    assert judge_gate(Gate.M1, m1[:2]).status == Status.SKIP  # no route checks: not proven
    assert judge_gate(Gate.M1, [*m1, _c("route.q", Gate.M1, Status.FAIL)]).status == Status.FAIL
    m2 = [_c("teardown.residue", Gate.M2, Status.PASS)]
    assert judge_gate(Gate.M2, m2).status == Status.SKIP
    skipped = [
        _c(p + "x", Gate.M2, Status.PASS) for p in ("deploy.", "alloc.", "logs.", "teardown.")
    ]
    skipped.append(_c("guard.x", Gate.M2, Status.SKIP))
    assert judge_gate(Gate.M2, skipped).status == Status.SKIP  # a skip is never a pass


def test_verdict() -> None:
    passed = judge_gate(
        Gate.M1,
        [
            _c("pre.x", Gate.M1, Status.PASS),
            _c("svc.a", Gate.M1, Status.PASS),
            _c("route.r", Gate.M1, Status.PASS),
        ],
    )
    failed = judge_gate(Gate.M1, [_c("pre.x", Gate.M1, Status.FAIL)])
    unproven = judge_gate(Gate.M2, [])
    skipped = judge_gate(
        Gate.M2,
        [
            _c(p + "x", Gate.M2, Status.SKIP if p == "deploy." else Status.PASS)
            for p in ("deploy.", "alloc.", "logs.", "teardown.", "guard.")
        ],
    )
    passed_m2 = judge_gate(
        Gate.M2,
        [
            _c(p + "x", Gate.M2, Status.PASS)
            for p in ("deploy.", "alloc.", "logs.", "teardown.", "guard.")
        ],
    )
    # One gate passed and none failed is not a pass: the other gate was never proven.
    assert verdict([passed, unproven]) == Verdict.INCOMPLETE
    assert unproven_text([passed, unproven]) == (
        "M2 not proven — no deploy, alloc, logs, teardown, guard checks ran"
    )
    assert verdict([passed, skipped]) == Verdict.INCOMPLETE
    assert unproven_text([passed, skipped]) == "M2 not proven — deploy.x: f"
    assert verdict([failed, unproven]) == Verdict.FAIL
    assert verdict([unproven]) == Verdict.INCOMPLETE
    assert verdict([passed, passed_m2]) == Verdict.PASS
    assert verdict([]) == Verdict.INCOMPLETE


class _FreeingLater:
    """A network whose `b_app` is removed by the allocator `after_s` seconds from now."""

    def __init__(self, after_s: float) -> None:
        self.free_at = time.monotonic() + after_s

    def network(self, name: str) -> dict[str, Any]:
        doc = inspect_doc()
        if time.monotonic() >= self.free_at:
            del doc["Services"]["b_app"]
        return doc


def _b_gone(facts: NetworkFacts) -> bool:
    return "b_app" not in facts.services


def _settle(frees_after_s: float, stable_s: float) -> tuple[NetworkFacts | None, bool]:
    return settle_network(
        _FreeingLater(frees_after_s),  # type: ignore[arg-type]
        "proxy",
        _b_gone,
        timeout_s=5,
        poll_s=0.01,
        stable_s=stable_s,
    )


def test_settle_waits_out_a_quiet_allocator_however_fast_it_polls() -> None:
    # Nothing changes for 0.6 s (many polls), then the addresses are freed: still seen.
    facts, done = _settle(0.6, stable_s=1.0)
    assert done and facts is not None and facts.task_ips == 2


def test_settle_gives_up_after_the_stable_time_not_before() -> None:
    t0 = time.monotonic()
    _, done = _settle(60, stable_s=0.5)
    assert not done and 0.5 <= time.monotonic() - t0 < 2


class _StackAfterUpdate:
    """A stack right after `docker service update`: which tasks run which container spec."""

    NEW, OLD = {"Image": "web@sha256:2"}, {"Image": "web@sha256:1"}

    def __init__(self, running_specs: list[dict[str, str]], update: str | None) -> None:
        self.running_specs, self.update = running_specs, update

    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        svc: dict[str, Any] = {
            "ID": "s1",
            "Spec": {"Name": "app_web", "TaskTemplate": {"ContainerSpec": self.NEW}},
            "ServiceStatus": {"RunningTasks": len(self.running_specs), "DesiredTasks": 1},
        }
        if self.update:
            svc["UpdateStatus"] = {"State": self.update}
        return [svc]

    def tasks(self, service_ids: list[str] | None = None) -> list[dict[str, Any]]:
        return [
            {
                "ServiceID": "s1",
                "DesiredState": "running",
                "Status": {"State": "running"},
                "Spec": {"ContainerSpec": spec},
            }
            for spec in self.running_specs
        ]


@pytest.mark.parametrize(
    ("specs", "update", "state"),
    [
        ([_StackAfterUpdate.OLD], None, "0/1 running the current spec"),  # not started yet
        ([_StackAfterUpdate.NEW], "updating", "update updating"),  # monitor window
        ([_StackAfterUpdate.OLD], "rollback_completed", "update rollback_completed"),
        ([_StackAfterUpdate.NEW], "completed", "running"),
        ([_StackAfterUpdate.NEW], None, "running"),  # a fresh deploy
    ],
    ids=["before-the-orchestrator", "monitoring", "rolled-back", "completed", "fresh"],
)
def test_an_update_converges_only_on_its_own_spec(
    specs: list[dict[str, str]], update: str | None, state: str
) -> None:
    states = stack_task_states(_StackAfterUpdate(specs, update), "app")  # type: ignore[arg-type]
    assert {name: str(s) for name, s in states.items()} == {"app_web": state}
    assert converged(states) == (state == "running")
    assert states["app_web"].gave_up == (update == "rollback_completed")


def test_a_service_scaled_to_zero_is_settled_once_its_tasks_are_gone() -> None:
    assert converged({"app_web": ServiceState(0, 0, scaled_to_zero=True)})
    assert not converged({"app_web": ServiceState(1, 0, scaled_to_zero=True)})  # stopping
    # A global service no node may run also desires no task: that is not a success.
    assert not converged({"app_web": ServiceState(0, 0)})
    assert not converged({})  # no services at all: nothing was deployed


def test_an_incomplete_verdict_is_a_failed_state_named_incomplete_and_an_error_in_junit() -> None:
    from pvcheck.flows.verify import final_state
    from pvcheck.report import Report

    report = Report("pv-1", "cc-ci", "c.toml", "2026-11-28T00:00:00Z")
    report.checks = [
        _c("pre.x", Gate.M1, Status.PASS),
        _c("svc.a", Gate.M1, Status.PASS),
        _c("route.r", Gate.M1, Status.PASS),
        Check("deploy.active", Gate.M2, Status.SKIP, "quiet", "busy", "another run is active"),
    ]
    state = final_state(report)
    assert state.is_failed() and state.name == "Incomplete"
    assert state.message == (
        "pvcheck verdict INCOMPLETE: M2 not proven — deploy.active: another run is active"
    )
    doc = report.as_json()
    assert doc["verdict"] == "incomplete" and doc["incomplete_reason"].startswith("M2 not")
    junit = report.to_junit()
    assert 'type="incomplete"' in junit and "INCOMPLETE" in junit
    report.checks[-1] = Check("deploy.active", Gate.M2, Status.FAIL, "quiet", "x")
    assert final_state(report).name == "Failed"
