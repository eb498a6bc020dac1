"""The allocator's own count (issue 27): IPAM status on the API's documented shape, the fill
probe's arithmetic, the forecast, the GC-race judgement and the probe's own log lines."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck import logscan
from pvcheck.allocator import (
    AllocatorResult,
    Forecast,
    RoundFigures,
    engine_advice,
    forecasts,
    judge_allocator,
    listed_addresses,
    overlapping,
    refusal,
    removal_rate,
)
from pvcheck.capacity import Fill, HeldCount, count_held, fill, ipam_status
from pvcheck.config import AllocatorConfig
from pvcheck.hostfacts import NetworkFacts
from pvcheck.records import VIP_SIGNATURE, Status
from tests.fakes import FakeSwarm

# `GET /networks/{id}` on API >= 1.52 (moby/moby#50917, #50946). The bridge answer is the
# `Status` block as published `docker network inspect` output shows it (a /16 with two
# containers: IPsInUse 5, DynamicIPsAvailable 65531). The ingress one is constructed on that
# same shape (figures of ours, an IPv6 subnet beside it), not taken from a real host.
API_152_BRIDGE: dict[str, Any] = {
    "Name": "appnet",
    "IPAM": {"Driver": "default", "Config": [{"Subnet": "172.20.0.0/16", "Gateway": "172.20.0.1"}]},
    "Status": {
        "IPAM": {"Subnets": {"172.20.0.0/16": {"IPsInUse": 5, "DynamicIPsAvailable": 65531}}}
    },
}
API_152_INGRESS: dict[str, Any] = {
    "Name": "ingress",
    "Ingress": True,
    "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]},
    "Status": {
        "IPAM": {
            "Subnets": {
                "fd00::/64": {"IPsInUse": 2, "DynamicIPsAvailable": 1000},
                "10.0.0.0/24": {"IPsInUse": 229, "DynamicIPsAvailable": 27},
            }
        }
    },
}


def test_ipam_status_reads_the_documented_shape() -> None:
    got = ipam_status(API_152_BRIDGE)
    assert got is not None and (got.subnet, got.in_use, got.available) == (
        "172.20.0.0/16",
        5,
        65531,
    )
    # The IPv4 subnet, whatever the order; an IPv6 one beside it is not the overlay's.
    ingress = ipam_status(API_152_INGRESS)
    assert ingress is not None and (ingress.subnet, ingress.available) == ("10.0.0.0/24", 27)


@pytest.mark.parametrize(
    "status",
    [
        None,  # API < 1.52: no Status at all
        {},
        {"IPAM": {"Subnets": {"10.0.0.0/24": {"IPsInUse": "5", "DynamicIPsAvailable": 3}}}},
        {"IPAM": {"Subnets": {"10.0.0.0/24": {"IPsInUse": True, "DynamicIPsAvailable": 3}}}},
        {"IPAM": {"Subnets": {"10.0.0.0/24": {"IPsInUse": -1, "DynamicIPsAvailable": 3}}}},
        {"IPAM": {"Subnets": ["10.0.0.0/24"]}},
        {"IPAM": {"Subnets": {"not a cidr": {"IPsInUse": 1, "DynamicIPsAvailable": 1}}}},
    ],
)
def test_ipam_status_is_absent_or_refused_on_any_other_shape(status: Any) -> None:
    inspect = {"Name": "x"} if status is None else {"Name": "x", "Status": status}
    assert ipam_status(inspect) is None


def test_the_engine_count_sees_what_the_endpoint_list_cannot() -> None:
    # The ingress above lists 2 endpoints while the allocator holds 226 of 253: 224 leaked.
    status = ipam_status(API_152_INGRESS)
    held = count_held("ingress", 253, 2, status)
    assert (held.method, held.free, held.held, held.leaked) == ("ipam-status", 27, 226, 224)
    assert held.headroom_pct == pytest.approx(100 * 27 / 253)
    blind = count_held("ingress", 253, 2)
    assert (blind.method, blind.free, blind.leaked) == ("endpoints", 251, None)


@pytest.mark.parametrize(
    ("capacity", "endpoints", "fill_", "free", "exact", "leaked"),
    [
        # Refused after 14 of 29 (the table, SIGTERM row): 15 held, none listed.
        (29, 0, Fill(29, 14, ("svc-x",), 5.0), 14, True, 15),
        # Everything the list leaves free was allocatable: no leak.
        (29, 3, Fill(26, 26, (), 1.0), 26, True, 0),
        # Refused with endpoints listed: held = capacity - allocatable; leaked = held - listed.
        (61, 4, Fill(57, 50, ("svc-y",), 5.0), 50, True, 7),
        # Stopped at a bound below the free count (ingress floor): a lower bound, no leak figure.
        (253, 2, Fill(127, 127, (), 2.0), 127, False, None),
    ],
)
def test_fill_probe_arithmetic(
    capacity: int, endpoints: int, fill_: Fill, free: int, exact: bool, leaked: int | None
) -> None:
    held = count_held("net", capacity, endpoints, None, fill_)
    assert (held.free, held.exact, held.leaked, held.method) == (free, exact, leaked, "fill-probe")


def test_fill_stops_at_the_first_refusal_and_removes_every_probe_service() -> None:
    swarm = FakeSwarm()
    net = swarm.create_overlay("scratch", "10.254.7.0/29", {"pvcheck.run": "r"})  # 5 usable
    swarm.free[net] = 3  # two addresses leaked
    probe = fill(swarm, net, 5, {"pvcheck.run": "r"}, "img", "probe", wait_s=0.05)
    assert (probe.allocated, probe.refused, len(probe.refused_ids)) == (3, True, 1)
    # Four services were made (three allocated, one refused) and all four removed again;
    # the allocator has its three addresses back.
    assert len([r for r in swarm.removed if r.startswith("svc-probe-")]) == 4
    assert swarm.free[net] == 3
    clean = fill(swarm, net, 3, {"pvcheck.run": "r"}, "img", "again", wait_s=0.05)
    assert (clean.allocated, clean.refused) == (3, False)


def test_fill_on_ingress_publishes_a_port_instead_of_joining_a_network() -> None:
    swarm = FakeSwarm()
    swarm.free[""] = 1
    probe = fill(swarm, None, 2, {"pvcheck.run": "r"}, "img", "ing", wait_s=0.05)
    assert (probe.allocated, probe.refused) == (1, True)


def _result(scratch_leaked: int | None, tasks: int = 5) -> AllocatorResult:
    now = datetime.now(UTC)
    counts = {"vips": 0, "task_ips": 0, "lb_endpoints": 0, "containers": 0}
    res = AllocatorResult(
        "proxy",
        65533,
        11,
        11,
        now,
        now,
        [RoundFigures(1, tasks, counts, counts, counts, True, True, 1.0)],
    )
    if scratch_leaked is not None:
        res.scratch_count = HeldCount("s", 61, 0, 61 - scratch_leaked, True, "fill-probe")
    res.shared_after = HeldCount("proxy", 65533, 11, 65522, True, "endpoints")
    res.ingress = HeldCount("ingress", 253, 2, 100, True, "ipam-status")
    res.removals_per_day = 40.0
    res.ingress_removals_per_day = 4.0
    return res


def test_forecast_days_for_both_networks() -> None:
    shared, ingress = forecasts(_result(4))  # 0.8 per removal
    assert shared.days == pytest.approx(65522 / (0.8 * 40))
    assert ingress.days == pytest.approx(100 / (0.8 * 4))
    assert shared.text().startswith("proxy: 2048 days (65522 free, 32.00 leaked a day)")
    # No leak: never; not counted: no forecast at all.
    assert all(f.days is None for f in forecasts(_result(0)))
    assert "never at this rate" in forecasts(_result(0))[0].text()
    assert "not forecast" in forecasts(_result(None))[0].text()
    assert Forecast("x", 10, False, 2.0).text() == "x: 5 days (at least 10 free, 2.00 leaked a day)"


def test_forecast_fails_m2_below_the_horizon_and_ingress_below_the_floor() -> None:
    cfg = AllocatorConfig(horizon_days=30)
    res = _result(4)  # ingress: 100 free at 3.2 a day: 31 days
    assert {c.id: c.status for c in judge_allocator(res, cfg)}["alloc.forecast"] == Status.PASS
    res.ingress_removals_per_day = 5.0  # 25 days
    checks = {c.id: c for c in judge_allocator(res, cfg)}
    assert checks["alloc.forecast"].status == Status.FAIL
    assert "ingress: 25 days" in checks["alloc.forecast"].found
    # Ingress nearly exhausted is an M2 finding even while proxy is fine.
    res.ingress = HeldCount("ingress", 253, 2, 20, True, "ipam-status")
    checks = {c.id: c for c in judge_allocator(res, cfg)}
    assert checks["alloc.ingress"].status == Status.FAIL
    assert checks["alloc.headroom"].status == Status.PASS


def test_the_leak_check_says_what_the_engine_did_not_leaked_zero() -> None:
    checks = {c.id: c for c in judge_allocator(_result(4), AllocatorConfig())}
    found = checks["alloc.leak"].found
    assert "the engine leaks under the incident's pattern" in found
    assert "4 address(es) held after 5 removed task(s), 0.80 per removal (fill-probe)" in found
    assert "endpoint delta 0" in found


def _net(name: str, subnet: str) -> dict[str, Any]:
    return {"Name": name, "IPAM": {"Config": [{"Subnet": subnet}]}}


def test_scratch_subnet_must_be_free_and_big_enough() -> None:
    nets = [_net("proxy", "10.10.0.0/16"), _net("ingress", "10.0.0.0/24"), {"Name": "host"}]
    assert overlapping("10.254.0.0/24", nets) == []
    assert overlapping("10.10.7.0/24", nets) == ["proxy"]
    assert overlapping("10.0.0.0/8", nets) == ["ingress", "proxy"]
    facts = NetworkFacts("proxy", "10.10.0.0/16", "overlay", 65533, 1, 1, 1, 0)
    why = refusal(AllocatorConfig(), facts, None, ["proxy"])
    assert why is not None and "overlaps proxy" in why
    with pytest.raises(ValueError, match=r"scratch_subnet 10\.254\.0\.0/28 holds 13 addresses"):
        AllocatorConfig(scratch_subnet="10.254.0.0/28", batch=5, rounds=1)


def test_ingress_below_the_floor_refuses_the_reproduction() -> None:
    facts = NetworkFacts("proxy", "10.10.0.0/16", "overlay", 65533, 1, 1, 1, 0)
    low = HeldCount("ingress", 253, 200, 53, True, "ipam-status")
    why = refusal(AllocatorConfig(headroom_floor_pct=50), facts, low)
    assert why is not None and why.startswith("ingress headroom 20.95% is below the floor 50%")


def test_removal_rate_from_run_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    now = time.time()
    for i in range(14):
        (runs / f"run-{i}").mkdir()
    old = runs / "run-0"
    os.utime(old, (now - 30 * 86400, now - 30 * 86400))
    cfg = AllocatorConfig(runs_dir=runs, tasks_per_run=3)
    per_day, source = removal_rate(cfg, now)
    assert per_day == pytest.approx(13 * 3 / 7) and source.startswith("13 runs in ")
    missing = AllocatorConfig(runs_dir=tmp_path / "nope", removals_per_day=9)
    assert removal_rate(missing, now) == (
        9,
        f"allocator.removals_per_day ({tmp_path / 'nope'} unreadable)",
    )
    assert removal_rate(AllocatorConfig(removals_per_day=7), now) == (
        7,
        "allocator.removals_per_day",
    )


SINCE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _line(minute: int, msg: str, extra: str = "") -> str:
    at = SINCE + timedelta(minutes=minute)
    return f'time="{at:%Y-%m-%dT%H:%M:%S}.1Z" level=error msg="{msg}"{extra}'


def _scan(lines: list[str], ours: tuple[str, ...] = ()) -> logscan.LogScan:
    return logscan.scan_lines(
        lines, logscan.error_family("proxy"), SINCE, SINCE + timedelta(hours=1), 50, "t", ours
    )


def test_gc_race_lines_warn_and_fail_from_the_threshold() -> None:
    lines = [
        _line(1, "Error (Unable to complete atomic operation, key modified) deleting object"),
        _line(2, "network proxy remove failed: error while removing network"),
        _line(3, "Error (Unable to complete atomic operation, key modified) deleting object"),
        _line(4, "level=info msg=ordinary line"),
    ]
    scan = _scan(lines)
    warn = logscan.gc_race(scan, "this run", None)
    assert warn.status == Status.PASS and warn.found == (
        "3 GC-race line(s) (network_remove_failed 1, key_modified 2): warning"
    )
    assert logscan.gc_race(scan, "this run", 4).status == Status.PASS
    failed = logscan.gc_race(scan, "this run", 3)
    assert failed.status == Status.FAIL and failed.id == "logs.gc-race"
    assert logscan.gc_race(_scan([]), "this run", 1).found == (
        "0 GC-race line(s) (network_remove_failed 0, key_modified 0)"
    )


def test_the_probes_own_vip_line_is_not_the_incident() -> None:
    probe = _line(5, "Failed allocation for service probe123", f' error="{VIP_SIGNATURE}"')
    other = _line(6, "Failed allocation for service realapp9", f' error="{VIP_SIGNATURE}"')
    scan = _scan([probe], ours=("probe123",))
    assert scan.counts["vip_exhausted"] == 0 and scan.counts[logscan.PROBE] == 1
    check = logscan.fresh_logs("logs.fresh-run", scan, "this run")
    assert check.status == Status.PASS and "1 VIP line(s) of pvcheck's own capacity probe" in (
        check.found
    )
    # Any other service's VIP line still fails, probe lines beside it or not.
    both = _scan([probe, other], ours=("probe123",))
    assert logscan.fresh_logs("logs.fresh-run", both, "this run").status == Status.FAIL
    assert _scan([probe]).counts["vip_exhausted"] == 1  # without the run's probe IDs


def test_a_vip_line_for_any_probe_service_the_run_created_is_the_probes() -> None:
    # CI, 2026-12-05: two services of one fill logged a refusal in the same second; only one
    # was still without a VIP when the wait ended, and the other's line failed the run.
    created = ("probe1", "probe2", "probe3")
    lines = [
        _line(5, "Failed allocation for service probe2", f' error="{VIP_SIGNATURE}"'),
        _line(5, "Failed allocation for service probe3", f' error="{VIP_SIGNATURE}"'),
    ]
    scan = _scan(lines, ours=created)
    assert (scan.counts["vip_exhausted"], scan.counts[logscan.PROBE]) == (0, 2)
    assert scan.probe_ids == ["probe2", "probe3"]  # only the ones a line names
    assert logscan.fresh_logs("logs.fresh-run", scan, "this run").status == Status.PASS


def test_a_fill_reports_every_service_it_created() -> None:
    swarm = FakeSwarm()
    net = swarm.create_overlay("scratch", "10.254.7.0/27", {"pvcheck.run": "r"})
    swarm.free[net] = 10
    probe = fill(swarm, net, 29, {"pvcheck.run": "r"}, "img", "c", wait_s=0.05, batch=8)
    made = [r for r in swarm.removed if r.startswith("svc-c-")]
    assert sorted(probe.created) == sorted(made) and len(made) == 16
    assert set(probe.refused_ids) < set(probe.created)


def test_engine_advice_names_the_fixes_and_the_mitigation() -> None:
    text = engine_advice("20.10.24+dfsg1", 4)
    assert text.startswith("engine 20.10.24+dfsg1: not in any release yet: moby/moby#53563")
    assert "docker/cli#7304" in text and "Mitigation now: remove stacks services first" in text
    assert "Mitigation" not in engine_advice("29.0.0", 0)
    checks = {c.id: c for c in judge_allocator(_result(4), AllocatorConfig())}
    assert "Mitigation now" in checks["alloc.leak"].detail


def test_a_service_without_tasks_is_listed_not_taken_for_a_leak() -> None:
    inspect = {"Id": "ing1", "Name": "ingress", "Services": {"web": {"VIP": "10.0.0.5"}}}
    facts = NetworkFacts("ingress", "10.0.0.0/24", "overlay", 253, 1, 1, 1, 0)

    def svc(name: str, net: str) -> dict[str, Any]:
        return {
            "ID": name,
            "Spec": {"Name": name},
            "Endpoint": {"VirtualIPs": [{"NetworkID": net}]},
        }

    swarm = FakeSwarm(services=[svc("web", "ing1"), svc("scaled0", "ing1"), svc("other", "x")])
    assert listed_addresses(swarm, inspect, facts) == facts.used + 1


def test_a_batched_fill_counts_what_each_batch_got_and_stops_after_a_refusal() -> None:
    swarm = FakeSwarm()
    net = swarm.create_overlay("scratch", "10.254.7.0/27", {"pvcheck.run": "r"})  # 29 usable
    swarm.free[net] = 10
    probe = fill(swarm, net, 29, {"pvcheck.run": "r"}, "img", "b", wait_s=0.05, batch=8)
    # Batches of 8: 8 allocated, then 2 of the next 8 (6 refused), and no third batch.
    assert (probe.allocated, len(probe.refused_ids)) == (10, 6)
    assert len([r for r in swarm.removed if r.startswith("svc-b-")]) == 16
    assert swarm.free[net] == 10


def test_the_how_line_for_the_runs_log_leaves_out_only_the_probes_own_lines() -> None:
    from pvcheck.claims import _log_window_command
    from pvcheck.config import load_config
    from tests.helpers import LAB_CONFIG

    cfg = load_config(LAB_CONFIG)
    since, until = "2026-12-01T12:00:00Z", "2026-12-01T12:05:00Z"
    line = _log_window_command(cfg, since, until, ("abc123def",))
    assert " | grep -v -F -e abc123def | awk " in line
    assert "grep -v" not in _log_window_command(cfg, since, until)
    with pytest.raises(ValueError, match="not service IDs"):
        _log_window_command(cfg, since, until, ("x; rm -rf /",))


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule applies to root")
def test_run_folders_others_can_change_do_not_set_the_forecast(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(50):
        (runs / f"run-{i}").mkdir()
    os.chown(runs, 65534, 65534)
    per_day, source = removal_rate(AllocatorConfig(runs_dir=runs, removals_per_day=3))
    assert per_day == 3 and "owned by uid 65534" in source
