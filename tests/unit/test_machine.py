"""The lab machine's plan (pvcheck.machine), without starting it: its link, its own folders,
what its launcher runs. The machine itself is proven by the cc-ci twin's integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvcheck.config import LabConfig, MachineConfig
from pvcheck.errors import ConfigError
from pvcheck.machine import Machine, _script
from tests.helpers import write_config


def _lab(tmp_path: Path, **machine: Any) -> Path:
    def mutate(raw: dict[str, Any]) -> None:
        raw["lab"].update(state_dir=str(tmp_path / "lab"), http_port=80, tls_port=443)
        raw["lab"]["machine"] = machine

    return write_config(tmp_path, mutate)


def test_the_machine_gets_its_own_run_logs_engine_data_and_named_folders(tmp_path: Path) -> None:
    m = Machine(MachineConfig(private_dirs=[Path("/var/lib/cc-ci-runs")]), tmp_path)
    script = _script(m)
    assert script.index("mount -t tmpfs") < script.index("dockerd")  # its own /run first
    for source, target in (("log", "/var/log"), ("docker", "/var/lib/docker"),
                           ("dirs/var_lib_cc-ci-runs", "/var/lib/cc-ci-runs")):  # fmt: skip
        assert f"mount --bind {tmp_path / source} {target}\n" in script
    # The lab's own way to its engine, beside the machine's default socket.
    assert f"--host unix://{tmp_path}/docker.sock" in script
    assert f"-f {tmp_path}/ssh/sshd_config" in script
    assert script.rstrip().endswith("wait")
    here, there = m.interfaces
    assert len(here) <= 15 and len(there) <= 15 and here != there
    assert (m.spec.here, m.spec.address) == ("169.254.78.1", "169.254.78.2")


@pytest.mark.faults
@pytest.mark.parametrize(
    ("machine", "field"),
    [
        ({"link": "10.0.0.0/30"}, "lab.machine.link"),  # an address another machine may have
        ({"link": "169.254.78.0/24"}, "lab.machine.link"),
        ({"link": "169.254.169.252/30"}, "lab.machine.link"),  # cloud metadata and DNS
        ({"private_dirs": ["/var/log/x"]}, "lab.machine.private_dirs"),  # its own already
        ({"private_dirs": ["/srv"]}, "lab.machine.private_dirs"),
        ({"netns": "ccci; reboot"}, "lab.machine.netns"),
        ({"name": "-oProxyCommand=x"}, "lab.machine.name"),
    ],
)
def test_a_machine_outside_its_bounds_is_refused(
    tmp_path: Path, machine: dict[str, Any], field: str
) -> None:
    from pvcheck.config import load_config

    with pytest.raises(ConfigError) as exc:
        load_config(_lab(tmp_path, **machine))
    assert exc.value.field == field


def test_ports_below_1024_belong_to_a_machine_only() -> None:
    with pytest.raises(ValueError, match=r"only a lab\.machine"):
        LabConfig(http_port=80)
    assert LabConfig(http_port=80, tls_port=443, machine=MachineConfig()).http_port == 80


@pytest.mark.faults
def test_a_private_folder_another_user_could_have_made_first_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its mount point is made here as root: never inside a folder others can write, where a
    link of theirs could stand in its place."""
    from pvcheck import machine
    from pvcheck.errors import LabError

    def no_machine(m: Machine) -> None:
        raise AssertionError("got past the check: a machine would start")

    monkeypatch.setattr(machine, "_link", no_machine)

    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    lab = LabConfig(
        state_dir=tmp_path / "lab",
        http_port=80,
        tls_port=443,
        machine=MachineConfig(private_dirs=[open_folder / "runs"]),
    )
    with pytest.raises(LabError, match=r"private_dirs: .*/open/runs is .* writable by every user"):
        machine.ensure_machine(lab)
    assert not (open_folder / "runs").exists()
