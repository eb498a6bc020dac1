"""Running as root on a shared host, against the real lab: links in machine-docs, the
engine-side lock, lab-only actions on an engine that is not the lab, and a recipe that asks
for the host's root."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.runs import LOCK_LABEL, LOCK_NAME
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.helpers import LAB_CONFIG, event_names, recorded_events, write_config

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_api")]


def test_a_symlinked_status_exits_2_naming_it_and_the_victim_is_untouched(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    config = write_config(tmp_path)
    status = tmp_path / "docs" / "STATUS-pvcheck.md"
    status.symlink_to(victim)
    assert main(["run", "--config", str(config)]) == 2
    assert f"{status}: is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "root's file\n" and status.is_symlink()
    assert not any(list_residue(engine, LABEL_RUN).values())  # teardown ran all the same


@pytest.fixture
def lock_held_elsewhere(engine: Swarm) -> Iterator[dict[str, str]]:
    """The engine lock as another machine's live run would hold it."""
    labels = {
        LOCK_LABEL: "1",
        f"{LOCK_LABEL}.run": "pv-20261128000000-0e1e2e",
        f"{LOCK_LABEL}.host": "builder-2.example",
        f"{LOCK_LABEL}.pid": "4242",
        f"{LOCK_LABEL}.proc_start": "1",
        f"{LOCK_LABEL}.at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    made = engine.api.create_config(LOCK_NAME, b"x", labels=labels)
    try:
        yield labels
    finally:
        for cfg in engine.api.configs(filters={"name": LOCK_NAME}):  # type: ignore[no-untyped-call]
            if cfg["ID"] == made["ID"]:
                engine.api.remove_config(cfg["ID"])  # type: ignore[no-untyped-call]


def test_another_machines_run_on_the_engine_makes_this_one_step_aside(
    lab: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    lock_held_elsewhere: dict[str, str],
) -> None:  # fmt: skip
    # This machine's own flock is free (another state folder would do the same): only the
    # lock kept on the engine can see the other run.
    assert main(["run", "--config", str(write_config(tmp_path))]) == 5
    err = capsys.readouterr().err
    assert "run pv-20261128000000-0e1e2e, pid 4242 on builder-2.example" in err and LOCK_NAME in err


def test_a_dead_holders_engine_lock_is_taken_over(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {
        LOCK_LABEL: "1",
        f"{LOCK_LABEL}.run": "pv-20261128000000-dead00",
        f"{LOCK_LABEL}.host": socket.gethostname(),
        f"{LOCK_LABEL}.pid": str(dead.pid),
        f"{LOCK_LABEL}.proc_start": "1",
        f"{LOCK_LABEL}.at": (datetime.now(UTC) - timedelta(minutes=5)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
    }
    engine.api.create_config(LOCK_NAME, b"x", labels=labels)
    out = tmp_path / "r.json"
    rc = main(["run", "--config", str(write_config(tmp_path)), "--json", str(out)])
    assert rc == 0, json.loads(out.read_text())["stages"]
    assert engine.api.configs(filters={"name": LOCK_NAME}) == []  # type: ignore[no-untyped-call]  # released at the end


@pytest.fixture
def not_a_lab_network(engine: Swarm) -> Iterator[str]:
    """An overlay network the lab did not make (no pvcheck.lab label), as on a real host."""
    name = "pvcheck-not-lab"
    net = engine.api.create_network(name, driver="overlay", scope="swarm")
    try:
        yield name
    finally:
        engine.api.remove_network(net["Id"])


def test_lab_actions_refuse_an_engine_whose_network_is_not_the_labs(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    not_a_lab_network: str,
) -> None:  # fmt: skip
    def on_that_network(raw: dict[str, Any]) -> None:
        raw["network"]["name"] = not_a_lab_network

    config = write_config(tmp_path, on_that_network)
    before = {s["Spec"]["Name"] for s in engine.services()}
    for action in ("down", "status", "up"):
        assert main(["lab", action, "--config", str(config)]) == 6, action
        assert "not a lab engine" in capsys.readouterr().err
    assert {s["Spec"]["Name"] for s in engine.services()} == before
    assert engine.network(not_a_lab_network) is not None


NOTES = LAB_CONFIG.parent / "recipes" / "notes"
# The notes recipe with one more volume: the stack makes it with the local driver bound to
# the host's `/`, and the app mounts it at /host (a root shell on the host, for whoever
# writes the recipe).
HOST_ROOT_VOLUME = """\
  host:
    driver: local
    driver_opts:
      type: none
      o: bind
      device: /
"""


def _hostile_recipe(folder: Path) -> Path:
    shutil.copytree(NOTES, folder)
    compose = folder / "compose.yml"
    text = compose.read_text()
    mounts, declared = "      - content:/srv/www/data\n", "volumes:\n  content:\n"
    assert mounts in text and declared in text
    text = text.replace(mounts, mounts + "      - host:/host\n")
    compose.write_text(text.replace(declared, declared + HOST_ROOT_VOLUME))
    return compose


def test_a_recipe_volume_binding_the_hosts_root_is_refused_before_anything_is_created(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = _hostile_recipe(tmp_path / "recipe")

    def hostile(raw: dict[str, Any]) -> None:
        raw["deploy"]["compose"]["file"] = str(compose)

    with recorded_events() as seen:
        assert main(["run", "--config", str(write_config(tmp_path, hostile))]) == 2
    err = capsys.readouterr().err
    assert f"{compose}: volumes.host.driver_opts: " in err and "refused" in err
    # Nothing of the recipe was made: no secret, config, network, volume, service or task
    # container (the run's only create is the engine lock, made and removed around it).
    # Everything pvcheck makes is named `pvc-…`: the engine may report a create of an
    # earlier test's network late, on this node, and that is not this run's.
    made = {
        kind: [n for _, n in event_names(seen, kind, "create") if n.startswith("pvc-")]
        for kind in ("service", "network", "volume", "secret", "container")
    }
    made["config"] = [n for _, n in event_names(seen, "config", "create") if n != LOCK_NAME]
    assert not any(made.values()), made
    assert not any(list_residue(engine, LABEL_RUN).values())
