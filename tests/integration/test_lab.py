"""The built-in lab on a real engine: up is idempotent, status shows routes, down leaves nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.lab import LAB_LABELS, lab_down, lab_up
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_LAB, Swarm


def _versions(engine: Swarm) -> dict[str, int]:
    return {s["Spec"]["Name"]: s["Version"]["Index"] for s in engine.services(LAB_LABELS)}


def test_proxy_has_the_configured_16_subnet(lab: Config) -> None:
    out = subprocess.run(
        ["docker", "network", "inspect", "proxy", "--format", "{{(index .IPAM.Config 0).Subnet}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == lab.network.subnet == "10.10.0.0/16"


def test_lab_up_twice_changes_nothing(lab: Config, engine: Swarm) -> None:
    before = _versions(engine)
    # The cc-ci twin may stand beside the default lab (both carry the lab label).
    assert set(lab.services.control_plane) <= set(before)
    lab_up(lab)
    assert _versions(engine) == before


def test_lab_status_shows_every_route_through_traefik(
    lab: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    for name in lab.services.control_plane:
        assert f"{name}" in out and "1/1" in out
    for route in lab.routes:
        line = next(x for x in out.splitlines() if f" {route.name} " in x)
        assert line.lstrip().startswith("ok") and f"-> {route.expect_status[0]}" in line


def test_lab_down_leaves_nothing_then_up_restores(lab: Config, engine: Swarm) -> None:
    left = lab_down(lab)
    assert not any(left.values()), left
    assert not any(list_residue(engine, f"{LABEL_LAB}=1").values())
    stacks = subprocess.run(
        ["docker", "stack", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [s for s in stacks if s.startswith("lab-")]
    assert engine.network("proxy") is None
    assert not any(lab_down(lab).values())  # again: nothing left, not an error
    probes = lab_up(lab)
    assert all(p.status in r.expect_status for p, r in zip(probes, lab.routes, strict=True))


@pytest.fixture
def another_machine() -> Iterator[tuple[str, str]]:
    """A network namespace of this test's own, joined to the host by a veth pair: a client
    that is not this machine. Yields (namespace, the host's address as it sees it)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    ns, host_if, ns_if = "pvcheck-t", "pvck-h", "pvck-n"
    host_ip, ns_ip = "169.254.77.1", "169.254.77.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def test_the_lab_answers_on_loopback_only(lab: Config, another_machine: tuple[str, str]) -> None:
    from pvcheck.lab import restrict_to_loopback

    assert lab.lab is not None
    ns, host_ip = another_machine
    port = lab.lab.http_port

    def from_the_namespace() -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-s", "-m", "3", "-o", "/dev/null",
             "-w", "%{http_code}", "-H", "Host: ci.lab.test", f"http://{host_ip}:{port}/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout

    assert port in restrict_to_loopback(lab.lab)
    assert from_the_namespace() == "000"  # another machine gets no answer
    local = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: ci.lab.test",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert local.stdout == "200"
    # Without the rule the same client is answered: the test can fail.
    restrict_to_loopback(lab.lab, add=False)
    try:
        assert from_the_namespace() == "200"
    finally:
        restrict_to_loopback(lab.lab)
