"""The allocator's own truth on the real lab (issue 27): the race leaks addresses the endpoint
list never shows, the allocator's count sees them, the mitigation leaks none, and a run
leaves ingress as it found it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest

from pvcheck import allocator
from pvcheck.capacity import HeldCount, count_held, fill
from pvcheck.config import AllocatorConfig, Config
from pvcheck.hostfacts import parse_network
from pvcheck.stackcli import DockerCli
from pvcheck.stacks import list_residue, remove_labelled, remove_stack_gently
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, Swarm
from pvcheck.wiring import build_seams
from tests.helpers import write_config
from tests.integration.test_flow_m1 import check, run

SOCKET = "unix:///var/run/docker.sock"


def _run_id() -> str:
    return f"pv-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


@pytest.fixture
def run_id(engine: Swarm) -> Iterator[str]:
    rid = _run_id()
    yield rid
    left = remove_labelled(engine, f"{LABEL_RUN}={rid}", timeout_s=120)
    assert not any(left.values()), left


def _reproduce(
    lab: Config, engine: Swarm, run_id: str, **alloc: object
) -> allocator.AllocatorResult:
    cfg = lab.allocator.model_copy(update={"rounds": 2, "batch": 5, **alloc})
    AllocatorConfig.model_validate(cfg.model_dump())  # the same bounds as a config file
    seams = build_seams(lab, engine, run_id, with_driver=False)
    settings = allocator.Settings(cfg, lab.network.name, run_id)
    return allocator.reproduce(seams, settings, progress=print)


def test_the_allocator_counts_a_leak_the_endpoint_list_cannot_see(
    lab: Config, engine: Swarm, run_id: str
) -> None:
    result = _reproduce(lab, engine, run_id)
    endpoint_delta = sum(r.leaked_total for r in result.rounds)
    print(
        f"concurrent stack rm: {result.removed_tasks} tasks removed, endpoint delta "
        f"{endpoint_delta}, allocator count {result.engine_leaked} "
        f"({result.scratch_count.summary() if result.scratch_count else '-'})"
    )
    assert result.scratch_count is not None and result.scratch_count.method == "fill-probe"
    # `network inspect` lists nothing left; the allocator still holds addresses.
    assert endpoint_delta == 0 and result.scratch_count.endpoints == 0
    assert result.engine_leaked is not None and result.engine_leaked > 0
    # The leak died with the scratch network: it is gone, and the real network untouched.
    assert not result.scratch_left
    assert not [n for n in engine.networks(f"{LABEL_RUN}={run_id}")]
    assert result.shared_before is not None and result.shared_after is not None
    assert result.shared_after.endpoints == result.shared_before.endpoints


def test_services_first_removal_leaks_nothing(lab: Config, engine: Swarm, run_id: str) -> None:
    result = _reproduce(lab, engine, run_id, removal="services-first")
    print(
        f"services-first: {result.removed_tasks} tasks removed, allocator count "
        f"{result.engine_leaked}"
    )
    assert result.engine_leaked == 0
    assert result.scratch_count is not None and result.scratch_count.exact


def _recipe_on(network: str, labels: dict[str, str]) -> str:
    """A recipe-shaped stack (the deploy proof's shape) joined to an external network."""
    from pvcheck.allocator import throwaway_compose

    return throwaway_compose("app", "local/busybox:1", network, labels, grace_s=10)


def _allocatable(engine: Swarm, network: str, net_id: str | None, run_id: str) -> HeldCount:
    facts = parse_network(engine.network(network) or {})
    probe = fill(
        engine,
        net_id,
        max(facts.capacity - facts.used, 0),
        {LABEL_RUN: run_id, LABEL_ROLE: "probe"},
        "local/busybox:1",
        f"pvt-{run_id[-6:]}",
    )
    return count_held(network, facts.capacity, facts.used, None, probe)


@pytest.mark.parametrize("gentle", [False, True], ids=["stack-rm", "services-first"])
def test_pvcheck_removes_its_own_stacks_without_a_leak(
    lab: Config, engine: Swarm, run_id: str, gentle: bool
) -> None:
    """What pvcheck removes from `proxy` (the deploy proof) goes the services-first way
    (stacks.remove_stack_gently); on a /27 stand-in for proxy, plain `docker stack rm` of
    the same stacks is what leaks."""
    labels = {LABEL_RUN: run_id, LABEL_ROLE: "recipe"}
    name = f"pvt-shared-{run_id[-6:]}"
    net_id = engine.create_overlay(name, "10.254.9.0/27", labels)
    cli = DockerCli(SOCKET)
    stacks = [f"pvt-{run_id[-6:]}-{i}" for i in range(4)]
    for stack in stacks:
        cli.stack_deploy(stack, _recipe_on(name, labels))
    _wait_running(engine, run_id, len(stacks))
    if gentle:
        for stack in stacks:
            assert remove_stack_gently(engine, cli, stack, 90) == []
    else:
        for stack in stacks:
            cli.stack_rm([stack])
    _settle_internal_networks(engine, stacks)
    count = _allocatable(engine, name, net_id, run_id)
    print(f"{'services-first' if gentle else 'docker stack rm'}: {count.summary()}")
    if gentle:
        assert count.leaked == 0
    else:
        assert count.leaked is not None and count.leaked > 0


def _wait_running(engine: Swarm, run_id: str, expected: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        services = engine.services({LABEL_RUN: run_id})
        if (
            sum(1 for s in services if (s.get("ServiceStatus") or {}).get("RunningTasks"))
            >= expected
        ):
            return
        time.sleep(0.25)
    raise AssertionError("the stacks never ran")


def _settle_internal_networks(engine: Swarm, stacks: list[str]) -> None:
    """`docker stack rm` may leave a stack's internal network while a task still holds it:
    removed here once free, as an operator would."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        nets = [
            n
            for n in engine.all_networks()
            if any(str(n.get("Name", "")).startswith(s) for s in stacks)
        ]
        if not nets:
            return
        for net in nets:
            engine.remove_network(str(net["Id"]))
        time.sleep(0.5)
    raise AssertionError("stack networks never went")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_full_run_leaves_ingress_as_it_found_it(
    lab: Config, engine: Swarm, tmp_path: Path, run_id: str
) -> None:
    before = _allocatable(engine, "ingress", None, run_id)
    rc, report = run(write_config(tmp_path), tmp_path)
    after = _allocatable(engine, "ingress", None, run_id)
    print(f"ingress before {before.summary()}; after {after.summary()}")
    assert rc == 0, report["stages"]
    assert (after.free, after.exact) == (before.free, before.exact)
    alloc = report["allocator"]
    assert alloc["engine_leaked"] is not None and alloc["scratch_count"]["method"] == "fill-probe"
    assert check(report, "alloc.ingress")["status"] == "pass"
    assert check(report, "alloc.forecast")["status"] == "pass"
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())


def test_ingress_below_the_floor_refuses_and_creates_nothing(
    lab: Config, engine: Swarm, run_id: str
) -> None:
    """Ingress filled past the floor by someone else's published ports: the reproduction is
    refused before a single object is made, and the finding names ingress."""
    facts = parse_network(engine.network("ingress") or {})
    # Fill until the endpoint list alone shows less than half free (the lab's floor).
    wanted = facts.capacity // 2 + 2 - facts.used
    hog = {LABEL_RUN: run_id, LABEL_ROLE: "hog"}
    for i in range(max(wanted, 0)):
        engine.create_probe_service(f"pvt-hog-{run_id[-6:]}-{i}", "local/busybox:1", hog, None)
    seams = build_seams(lab, engine, run_id, with_driver=False)
    other_run = _run_id()
    settings = allocator.Settings(lab.allocator, lab.network.name, other_run)
    since = datetime.now(UTC)
    obs = allocator.gather(seams, settings, progress=print)
    created = [
        e
        for e in docker.from_env().events(
            since=since, until=datetime.now(UTC), filters={"event": "create"}, decode=True
        )
    ]
    assert obs.result is None and obs.refused is not None
    assert obs.refused.startswith("ingress headroom"), obs.refused
    # The hogs' VIPs are accounted for (services without tasks), so the lists alone show
    # ingress below the floor: nothing at all was created, not even a probe.
    assert created == [], created
    assert obs.ingress is not None and obs.ingress.method == "endpoints"
    assert obs.ingress.endpoints >= facts.used + max(wanted, 0)
    print(f"refused: {obs.refused}; nothing created")
    checks = {c.id: c for c in allocator.judge(obs, settings)}
    assert checks["alloc.ingress"].status == "fail" and checks["alloc.stage"].status == "skip"
