"""The built-in lab on a real engine: up is idempotent, status shows routes, down leaves nothing."""

from __future__ import annotations

import subprocess

import pytest

from pvcheck.cli import main
from pvcheck.config import Config
from pvcheck.lab import LAB_LABELS, lab_down, lab_up
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_LAB, Swarm

pytestmark = pytest.mark.integration


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
    probes = lab_up(lab)
    assert all(p.status in r.expect_status for p, r in zip(probes, lab.routes, strict=True))
