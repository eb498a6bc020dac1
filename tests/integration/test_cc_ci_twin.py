"""The shipped cc-ci config, proven on the cc-ci twin (`pvcheck lab up --profile cc-ci`): two
machines, this one the orchestrator and the swarm host a machine in namespaces of this one,
reached as `ssh cc-ci` (pvcheck.machine).

Each test runs deployments/cc-ci.toml through lab/cc-ci-twin.toml, adding in its own overlay
only what a test must move (its docs and state folders; a wait bound, a driver or a fault).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import tomli_w

from pvcheck import twin
from pvcheck.api import free_port
from pvcheck.app.cli import main
from pvcheck.config import Config, load_config
from pvcheck.deploy import adopt as adoption
from pvcheck.deploy.drone import FINISHED, DroneClient
from pvcheck.machine import Machine, machine_of
from pvcheck.wiring import build_seams, open_engine
from tests.helpers import PVFIX_DONE, ROOT
from tests.integration.test_flow_m1 import check, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

TWIN = ROOT / "lab" / "cc-ci-twin.toml"
HARNESS_STACK = re.compile(r"^[a-z0-9]{4}-[0-9a-f]{6}_ci_commoninternet_net$")


def overlay(tmp_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """A config on top of the twin's: this test's docs and state folders, plus `extra`."""
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "STATUS-pvfix.md").write_text(PVFIX_DONE, encoding="utf-8")
    doc: dict[str, Any] = {
        "base": str(TWIN),
        "target": {"state_dir": str(tmp_path / "state")},
        "docs": {"dir": str(docs)},
    }
    for key, value in (extra or {}).items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / "pvcheck.toml"
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def command_driver(cfg: Config, tmp_path: Path, *harness_flags: str) -> dict[str, Any]:
    """Deploy through the command driver with the host's harness (as an operator without a
    Drone token would)."""
    results = tmp_path / "results.json"
    argv = [*twin.harness_argv(cfg, str(results)), *harness_flags]
    return {"deploy": {"driver": "command", "command": {"argv": argv, "results": str(results)}}}


def host_machine(cfg: Config) -> Machine:
    assert cfg.lab is not None
    machine = machine_of(cfg.lab)
    assert machine is not None, "the twin is two machines"
    return machine


def host_engine(cfg: Config) -> docker.DockerClient:
    """The twin host's engine, through the lab's own socket to it (never the run's way in)."""
    return docker.DockerClient(base_url=host_machine(cfg).engine_url)


def on_host(cfg: Config, argv: list[str]) -> list[str]:
    return host_machine(cfg).enter(argv)


def services_created(cfg: Config, since: datetime) -> list[str]:
    """Services the twin host's engine created since then (its own `docker events`)."""
    client = host_engine(cfg)
    events = client.events(
        since=since,
        until=datetime.now(UTC),
        filters={"type": "service", "event": "create"},
        decode=True,
    )
    return [e["Actor"]["Attributes"].get("name", "?") for e in events]


@contextlib.contextmanager
def watching_services(cfg: Config) -> Iterator[list[str]]:
    """The services the twin host's engine creates while the block runs, from its live event
    stream (a run that makes hundreds of events outgrows the engine's buffer of past ones)."""
    created: list[str] = []
    stream = host_engine(cfg).events(filters={"type": "service", "event": "create"}, decode=True)

    def read() -> None:
        with contextlib.suppress(Exception):  # the stream is closed under it at the end
            for event in stream:
                created.append(event["Actor"]["Attributes"].get("name", "?"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield created
    finally:
        time.sleep(1)  # the last events on their way
        stream.close()
        reader.join(timeout=10)


def _assert_passes(report: dict[str, Any], driver: str) -> None:
    assert report["verdict"] == "pass", [c for c in report["checks"] if c["status"] != "pass"]
    assert report["gates"]["M1"]["status"] == "pass" and report["gates"]["M2"]["status"] == "pass"
    for tier in ("install", "upgrade", "backup_restore", "functional"):
        assert check(report, f"deploy.tier.{tier}")["status"] == "pass", tier
    attached = check(report, "deploy.attached")["found"]
    (service,) = re.findall(r"(\S+_app) seen on proxy", attached)
    stack = service.removesuffix("_app")
    assert HARNESS_STACK.match(stack), attached
    teardown = check(report, "deploy.teardown")
    assert teardown["status"] == "pass" and stack in teardown["expected"], teardown
    assert teardown["found"].startswith("0 objects left")
    assert check(report, "guard.section")["found"] == "line 11: Step 0 — allocator guard"
    assert report["stages"]["deploy"] == "pass", (driver, report["stages"])


def test_shipped_config_passes_m1_and_m2_through_drone(cc_ci_twin: Config, tmp_path: Path) -> None:
    rc, report = run(overlay(tmp_path), tmp_path)
    assert rc == 0, report.get("stages")
    _assert_passes(report, "drone")
    # The tiers come from the build's results.json (schema 2), not from Drone steps.
    assert check(report, "deploy.tier.install")["detail"] == "install: 2 tests pass"
    assert check(report, "deploy.tier.backup_restore")["detail"].startswith("backup: 6 tests pass")
    assert check(report, "deploy.no-secret-leak")["status"] == "pass"
    routes = [c for c in report["checks"] if c["id"].startswith("route.")]
    names = ["dashboard", "drone-ui", "drone-health", "reports", "traefik-api"]
    assert {c["id"] for c in routes} - {"route.recheck-deploy", "route.recheck-allocator"} == {
        f"route.{name}{side}" for name in names for side in ("", "-via-host")
    }
    assert all(c["status"] == "pass" for c in routes)
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert "`traefik_ci_commoninternet_net`" in status  # stacks listed by name


def test_shipped_config_passes_m1_and_m2_through_the_command_driver(
    cc_ci_twin: Config, tmp_path: Path
) -> None:
    rc, report = run(overlay(tmp_path, command_driver(cc_ci_twin, tmp_path)), tmp_path)
    assert rc == 0, report.get("stages")
    _assert_passes(report, "command")


@pytest.mark.parametrize("busy", ["held app lock", "sweep marker"])
def test_an_active_run_or_sweep_gives_incomplete_and_creates_nothing(
    cc_ci_twin: Config, tmp_path: Path, busy: str
) -> None:
    """A harness run holds its app's flock in the host's /run/lock for its whole life (cc-ci
    b302f3a); a stale lock file beside it, held by nobody, is not a run. The shipped lock
    folder, on the host: a file of the same name on this machine would not count."""
    sweep = tmp_path / "upgrade-all.lock"
    stale = "/run/lock/cc-ci-app-stal-000000.ci.commoninternet.net.lock"
    held = "/run/lock/cc-ci-app-cust-0a1b2c.ci.commoninternet.net.lock"
    subprocess.run(on_host(cc_ci_twin, ["touch", stale]), check=True)  # unheld
    holder = None
    if busy == "held app lock":
        holder = subprocess.Popen(on_host(cc_ci_twin, ["flock", held, "sleep", "120"]))
        deadline = time.monotonic() + 10
        while subprocess.run(on_host(cc_ci_twin, ["flock", "-n", held, "true"])).returncode == 0:
            assert time.monotonic() < deadline, "flock never took the lock"
            time.sleep(0.1)
    else:
        sweep.write_text("sweep running\n")
    config = overlay(tmp_path, {"deploy": {"active_runs": {"markers": [str(sweep)], "wait_s": 2}}})
    started = datetime.now(UTC)
    try:
        rc, report = run(config, tmp_path)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        subprocess.run(on_host(cc_ci_twin, ["rm", "-f", stale, held]), check=True)
    assert rc == 4, report.get("stages")
    assert report["verdict"] == "incomplete"
    assert report["gates"]["M1"]["status"] == "pass"
    assert report["incomplete_reason"].startswith("M2 not proven — deploy.active: ")
    named = "cust-0a1b2c.ci.commoninternet.net" if busy == "held app lock" else str(sweep)
    assert named in report["incomplete_reason"]
    assert "stal-000000" not in report["incomplete_reason"]
    assert services_created(cc_ci_twin, started) == []
    for stage in ("deploy", "allocator"):
        assert "another run or sweep is active" in report["stages"][stage]
    journal = (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
    assert f"run `{report['run_id']}`: INCOMPLETE" in journal


@contextlib.contextmanager
def drone_standin(cfg: Config, tmp_path: Path, *harness: str) -> Iterator[str]:
    """A second Drone API stand-in on the twin host running `harness` for each build: its
    URL."""
    token_file = tmp_path / "token"
    token_file.write_text(os.environ["PVCHECK_TWIN_DRONE_TOKEN"])
    port = free_port()
    assert cfg.deploy is not None and cfg.deploy.drone is not None
    assert cfg.lab is not None and cfg.lab.machine is not None
    address = cfg.lab.machine.address
    proc = subprocess.Popen(
        on_host(cfg, [sys.executable, str(twin.DRONE_API), "--listen", address, "--port",
                      str(port), "--token-file", str(token_file), "--repo",
                      cfg.deploy.drone.repo, "--workdir", str(tmp_path / "builds"), "--",
                      *harness]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://{address}:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the stand-in did not start"
                time.sleep(0.1)
        yield f"{url}/"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


@pytest.fixture
def busy_drone(cc_ci_twin: Config, tmp_path: Path) -> Iterator[str]:
    """A second Drone API stand-in with one build running (its runner sleeps): the URL."""
    with drone_standin(cc_ci_twin, tmp_path, "sleep", "120") as url:
        assert cc_ci_twin.deploy is not None and cc_ci_twin.deploy.drone is not None
        builds = f"{url}api/repos/{cc_ci_twin.deploy.drone.repo}/builds"
        headers = {"Authorization": f"Bearer {os.environ['PVCHECK_TWIN_DRONE_TOKEN']}"}
        made = httpx.post(builds, params={"RECIPE": "other"}, headers=headers, trust_env=False)
        assert made.status_code == 200
        yield url


def test_a_failing_rung_in_the_builds_results_fails_m2_naming_it(
    cc_ci_twin: Config, tmp_path: Path
) -> None:
    """One step ran the whole harness and failed; which tier failed is in results.json."""
    harness = [*twin.harness_argv(cc_ci_twin, "{results}"), "--fail-tier", "upgrade"]
    with drone_standin(cc_ci_twin, tmp_path, *harness) as url:
        results = str(tmp_path / "builds" / "runs" / "{build}" / "results.json")
        config = overlay(tmp_path, {"deploy": {"drone": {"url": url, "results_path": results}}})
        rc, report = run(config, tmp_path)
    assert rc == 1, report.get("stages")
    assert report["gates"]["M2"]["status"] == "fail"
    upgrade = check(report, "deploy.tier.upgrade")
    assert upgrade["status"] == "fail" and upgrade["found"] == "fail"
    assert upgrade["detail"].startswith("upgrade: 1 tests fail")
    assert check(report, "deploy.tier.install")["status"] == "pass"
    # Never run after the failure: unverified, which is never a pass.
    assert check(report, "deploy.tier.backup_restore")["found"] == "unver"
    assert check(report, "deploy.teardown")["status"] == "pass"


def test_a_running_drone_build_gives_incomplete_and_creates_nothing(
    cc_ci_twin: Config, tmp_path: Path, busy_drone: str
) -> None:
    empty = tmp_path / "active"
    empty.mkdir()
    config = overlay(
        tmp_path,
        {
            "deploy": {
                "drone": {"url": busy_drone},
                "active_runs": {"folder": str(empty), "wait_s": 2},
            }
        },
    )
    started = datetime.now(UTC)
    rc, report = run(config, tmp_path)
    assert rc == 4, report.get("stages")
    assert report["verdict"] == "incomplete"
    assert "Drone build 1 running" in report["incomplete_reason"]
    assert services_created(cc_ci_twin, started) == []


@pytest.fixture
def leftover_stacks(cc_ci_twin: Config) -> Iterator[list[str]]:
    """Stacks a faulty harness left behind on the twin host: removed after the test (pvcheck
    never removes what it did not create)."""
    left: list[str] = []
    yield left
    docker_cli = ["docker", "-H", host_machine(cc_ci_twin).engine_url]
    for stack in left:
        subprocess.run([*docker_cli, "stack", "rm", stack], capture_output=True, check=False)
    label = [f"label=com.docker.stack.namespace={s}" for s in left]
    deadline = time.monotonic() + 60
    for flt in label:
        while subprocess.run([*docker_cli, "ps", "-aq", "--filter", flt], capture_output=True,
                             text=True, check=False).stdout.strip():  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.5)
        vols = subprocess.run([*docker_cli, "volume", "ls", "-q", "--filter", flt],
                              capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
        for vol in vols:
            subprocess.run([*docker_cli, "volume", "rm", vol], capture_output=True, check=False)


def test_a_harness_that_leaves_its_stack_fails_the_teardown_naming_it(
    cc_ci_twin: Config, tmp_path: Path, leftover_stacks: list[str]
) -> None:
    config = overlay(tmp_path, command_driver(cc_ci_twin, tmp_path, "--leave-stack"))
    rc, report = run(config, tmp_path)
    teardown = check(report, "deploy.teardown")
    stacks = re.findall(r"no object of stack (\S+) remains", teardown["expected"])
    leftover_stacks.extend(stacks)
    assert rc == 1, report.get("stages")
    (stack,) = stacks
    assert HARNESS_STACK.match(stack)
    assert teardown["status"] == "fail"
    assert f"service {stack}_app" in teardown["found"]
    assert f"volume {stack}_content" in teardown["found"]
    assert report["gates"]["M2"]["status"] == "fail"


@pytest.fixture
def way_in_cut(cc_ci_twin: Config) -> Iterator[str]:
    """This machine's packets to the host's HTTPS port rejected: its public way in is cut,
    while its Traefik still answers on the host itself."""
    assert cc_ci_twin.lab is not None and cc_ci_twin.lab.machine is not None
    address = cc_ci_twin.lab.machine.address
    rule = ["OUTPUT", "-d", address, "-p", "tcp", "--dport", "443", "-m", "comment",
            "--comment", "pvcheck-test: way in cut", "-j", "REJECT"]  # fmt: skip
    subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
    try:
        yield address
    finally:
        subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)


def test_the_way_in_and_traefik_are_told_apart(
    cc_ci_twin: Config, tmp_path: Path, way_in_cut: str
) -> None:
    started = datetime.now(UTC)
    rc, report = run(overlay(tmp_path), tmp_path)
    assert rc == 1, report.get("stages")
    dashboard, on_host = check(report, "route.dashboard"), check(report, "route.dashboard-via-host")
    assert dashboard["status"] == "fail" and on_host["status"] == "pass"
    assert (
        "the way in is broken: it answers on the host through its own Traefik"
        in (dashboard["detail"])
    )
    assert report["gates"]["M1"]["status"] == "fail"
    assert "fix routing first" in report["stages"]["deploy"]  # no test traffic on a cut host
    assert services_created(cc_ci_twin, started) == []


def test_two_harness_runs_beside_the_proof_are_neither_watched_nor_blamed(
    cc_ci_twin: Config, tmp_path: Path
) -> None:
    """Mid-proof, two more harness runs start on the host (other pull requests, so other
    apps; as a second runner or a sweep would). The proof knows its own run by the flock its
    build's process holds, and watches that stack alone."""
    engine = host_engine(cc_ci_twin)
    others: list[subprocess.Popen[bytes]] = []

    def start_others() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = [s.name for s in engine.services.list()]
            if any(HARNESS_STACK.match(n.removesuffix("_app")) for n in names):
                break
            time.sleep(0.5)
        for pr in ("11", "12"):
            assert cc_ci_twin.deploy is not None
            harness = twin.harness_argv(cc_ci_twin, str(tmp_path / f"pr{pr}.json"))
            argv = [a.replace("{recipe}", cc_ci_twin.deploy.recipe) for a in harness]
            argv += ["--pr", pr]
            others.append(subprocess.Popen(on_host(cc_ci_twin, argv), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))  # fmt: skip

    starter = threading.Thread(target=start_others)
    starter.start()
    try:
        rc, report = run(overlay(tmp_path), tmp_path)
    finally:
        starter.join()
        codes = [p.wait(timeout=300) for p in others]
    assert len(others) == 2 and codes == [0, 0], codes  # both really ran, and passed
    assert rc == 0, report.get("stages")
    attached = check(report, "deploy.attached")["found"]
    mine = re.findall(r"(\S+)_app seen on proxy", attached)
    beside = re.search(r"not this run's: (.+)$", attached)
    assert len(mine) == 1 and beside is not None, attached
    assert len(beside.group(1).split(", ")) == 2, attached  # both seen, neither taken
    _assert_passes(report, "drone")
    teardown = check(report, "deploy.teardown")
    assert teardown["expected"].count("no object of stack") == 1, teardown


def finished_build(cfg: Config) -> tuple[str, DroneClient]:
    """One build of the shipped recipe on the twin's Drone, run to its end (as a `!testme`
    would): its number, and a client that can list the builds."""
    assert cfg.deploy is not None
    client = adoption.drone_client(cfg, "1")
    assert client is not None
    number = int(client.create(cfg.deploy.recipe)["number"])
    deadline = time.monotonic() + 300
    while (build := client.get(number))["status"] not in FINISHED:
        assert time.monotonic() < deadline, build
        time.sleep(1)
    assert build["status"] == "success", build
    return str(number), client


def test_a_finished_run_is_adopted_with_no_deploy_and_refused_when_it_cannot_count(
    cc_ci_twin: Config, tmp_path: Path, leftover_stacks: list[str]
) -> None:
    run_id, drone = finished_build(cc_ci_twin)
    builds = drone._call("GET", drone.base)
    config = overlay(tmp_path)
    out = tmp_path / "report.json"
    with watching_services(cc_ci_twin) as created:
        rc = main(["run", "--config", str(config), "--adopt", run_id, "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, [c for c in report["checks"] if c["status"] != "pass"]
    assert report["gates"]["M2"]["status"] == "pass"
    adopted = check(report, "deploy.adopted")
    assert adopted["found"].startswith(f"run {run_id} (recipe custom-html) finished ")
    assert f"Drone build {run_id} started" in adopted["detail"]
    for tier in ("install", "upgrade", "backup_restore", "functional"):
        assert check(report, f"deploy.tier.{tier}")["status"] == "pass", tier
    assert check(report, "deploy.teardown")["found"] == "0 objects left"
    # No deploy: no new build, and the host created no service but the reproduction's own.
    assert drone._call("GET", drone.base) == builds
    assert created and all(name.startswith("pvc-") for name in created), created
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert f"harness run `{run_id}` of recipe `custom-html`" in status
    assert f"https://ci.commoninternet.net/runs/{run_id}/results.json" in status

    # Refused, judged against the live host: a fix after the run started...
    cfg = load_config(config)
    seams = build_seams(cfg, open_engine(cfg.target), "adopt-test", with_driver=False)
    base = adoption.Settings.from_config(cfg, run_id)
    now = datetime.now(UTC)
    later = replace(base, adopt=base.adopt.model_copy(update={"fixed_at": now}))
    (refused,) = adoption.judge(adoption.gather(seams, later, drone), later)[0]
    assert refused.status == "fail"
    assert "may have started before the fix (deploy.adopt.fixed_at" in refused.detail

    # ...and a run that left its stack (a manual run: no Drone build, its start bounded by
    # max_run_s, here short so that only the stack decides).
    manual = "manual-adopt"
    results = cfg.deploy.adopt.results_path.replace("{run}", manual)  # type: ignore[union-attr]
    argv = [a.replace("{recipe}", "custom-html") for a in twin.harness_argv(cfg, results)]
    done = subprocess.run(on_host(cc_ci_twin, [*argv, "--leave-stack", "--run-id", manual]),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    found_stack = re.search(r", stack (\S+), run ", done.stdout)
    assert found_stack is not None, done.stdout[-2000:]
    stack = found_stack.group(1)
    leftover_stacks.append(stack)
    assert done.returncode == 0, done.stdout[-2000:]
    short = adoption.Settings.from_config(cfg, manual)
    short = replace(short, adopt=short.adopt.model_copy(update={"max_run_s": 1.0}))
    checks = {c.id: c for c in adoption.judge(adoption.gather(seams, short, None), short)[0]}
    assert checks["deploy.adopted"].status == "pass", checks["deploy.adopted"]
    teardown = checks["deploy.teardown"]
    assert teardown.status == "fail"
    assert f"service {stack}_app" in teardown.found and f"volume {stack}_content" in teardown.found
    assert teardown.detail == (
        f"the harness reported clean_teardown=False; stacks of custom-html's runs on the host "
        f"now: {stack}"
    )
