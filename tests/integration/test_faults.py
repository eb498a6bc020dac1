"""Faults on the real lab: a second run on a busy host, a full disk under machine-docs, a
malformed state file, a reverse-proxy outage mid-run, dockerd restarted mid-reproduction."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.lab import restart_dockerd, wait_routes
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, Swarm
from tests.helpers import process_table, spawn_run, wait_for_line, wait_for_throwaways, write_config
from tests.integration.test_flow_m1 import check, run

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_api")]


def test_second_run_on_a_busy_host_refuses_and_the_first_is_unaffected(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    first = spawn_run(config, tmp_path / "first.log")
    deadline = time.monotonic() + 180
    while not engine.services({LABEL_ROLE: "throwaway"}):  # the first run is mid-way
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert main(["run", "--config", str(config)]) == 5
    assert "another pvcheck run holds" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert not any(list_residue(engine, LABEL_RUN).values())


PREFECT_SERVER = b"prefect.server.api.server:create_app"


def test_a_killed_run_leaves_no_prefect_server_behind(
    lab: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PVCHECK_API_KEEP_S=0 and no configured API a run starts one of its own; SIGKILL
    skips every exit handler, so the kernel must stop it (it used to live on, about 200 MB
    each). The kept server's own stop is tests/unit/test_api_kept.py's."""
    monkeypatch.setenv("PVCHECK_API_KEEP_S", "0")
    log = tmp_path / "run.log"
    proc = spawn_run(write_config(tmp_path), log)
    wait_for_line(log, "for this run (set PREFECT_API_URL", proc, timeout_s=120)
    (server,) = [
        pid
        for pid, (ppid, cmd) in process_table().items()
        if ppid == proc.pid and PREFECT_SERVER in cmd
    ]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while PREFECT_SERVER in process_table().get(server, (0, b""))[1]:  # whoever its parent is
        assert time.monotonic() < deadline, f"the run's Prefect API (pid {server}) lives on"
        time.sleep(0.2)
    # Killed before any test stack existed; the run's registry record is all it left, and
    # the next run's janitor reaps it.
    assert main(["run", "--config", str(tmp_path / "pvcheck.toml")]) == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A machine-docs folder on a tiny tmpfs of its own (the test fills it or makes it
    read-only)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)], check=False
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("disk-full", "No space left on device"), ("read-only", "Read-only file system")],
)
def test_unwritable_docs_keep_old_files_and_name_the_file(
    lab: Config,
    engine: Swarm,
    tmp_path: Path,
    full_disk: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    error: str,
) -> None:
    def docs_on_full_disk(raw: dict[str, Any]) -> None:
        raw["docs"]["dir"] = str(full_disk)

    config = write_config(tmp_path, docs_on_full_disk)
    (full_disk / "STATUS-pvfix.md").write_text("# pvfix\n\n## DONE\n")
    status = full_disk / "STATUS-pvcheck.md"
    status.write_text("# STATUS\n\nold notes\n")
    if fault == "disk-full":
        with contextlib.suppress(OSError), open(full_disk / "filler", "wb") as fh:
            while True:
                fh.write(b"x" * 4096)
                fh.flush()
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(full_disk)], check=True)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert error in err and str(full_disk) in err
    assert status.read_text() == "# STATUS\n\nold notes\n"
    assert not [p.name for p in full_disk.iterdir() if p.name.endswith(".tmp")]
    assert not any(list_residue(engine, LABEL_RUN).values())


def test_malformed_status_is_reported_and_left_untouched(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    status = tmp_path / "docs" / "STATUS-pvcheck.md"
    broken = "# mine\n<!-- pvcheck:begin summary -->\nhalf a section\n"
    status.write_text(broken)
    assert main(["run", "--config", str(config)]) == 2
    assert "STATUS-pvcheck.md:2: section 'summary' is not closed" in capsys.readouterr().err
    assert status.read_text() == broken
    assert not any(list_residue(engine, LABEL_RUN).values())  # teardown ran all the same


def test_an_unreadable_docker_log_is_an_error_not_a_clean_log(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    """A log that is not there proves nothing: the log checks are errors, the run is not a
    PASS, and STATUS says the log was not read instead of showing zero counts."""
    missing = tmp_path / "rotated-away.log"

    def log_elsewhere(raw: dict[str, Any]) -> None:
        raw["logs"]["path"] = str(missing)

    rc, report = run(write_config(tmp_path, log_elsewhere), tmp_path)
    assert rc == 1 and report["verdict"] != "pass"
    fresh = check(report, "logs.fresh-run")
    assert fresh["status"] == "error" and f"{missing}: No such file or directory" in fresh["detail"]
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert f"**not read**: {missing}: No such file or directory" in status
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())


@pytest.fixture
def traefik_back(lab: Config) -> Iterator[str]:
    """Whatever a test does to the lab's Traefik, it is back (and routing) afterwards."""
    assert lab.lab is not None
    yield lab.lab.traefik_service
    docker.from_env().services.get(lab.lab.traefik_service).scale(1)  # type: ignore[no-untyped-call]
    wait_routes(lab, 90)


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_traefik_outage_mid_run_starts_no_new_traffic(
    lab: Config, engine: Swarm, tmp_path: Path, traefik_back: str
) -> None:
    # Another recipe run holds the deploy proof at its start, after the routes were checked;
    # meanwhile Traefik goes away; then the other run ends.
    active = tmp_path / "active"
    active.mkdir()
    (active / "recipe-other.running").write_text("another run\n")

    def held_by_another_run(raw: dict[str, Any]) -> None:
        raw["deploy"]["active_runs"].update(folder=str(active), wait_s=120)

    log, out = tmp_path / "run.log", tmp_path / "report.json"
    proc = spawn_run(write_config(tmp_path, held_by_another_run), log, "--json", str(out))
    wait_for_line(log, "routes checked in", proc)
    docker.from_env().services.get(traefik_back).scale(0)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 60
    while not _refused(18080):
        assert time.monotonic() < deadline, "Traefik kept answering after scale 0"
        time.sleep(0.2)
    (active / "recipe-other.running").unlink()
    created: set[str] = set()
    while proc.poll() is None:
        created |= {s["Spec"]["Name"] for s in engine.services({LABEL_RUN: ""})}
        time.sleep(0.2)
    report = json.loads(out.read_text())
    assert proc.returncode == 1, log.read_text()[-3000:]
    assert not created, f"test traffic started after the outage: {created}"
    for stage in ("deploy", "allocator"):
        recheck = check(report, f"route.recheck-{stage}")
        assert recheck["status"] == "fail" and "route.drone-ui" in recheck["found"]
    assert check(report, "alloc.stage")["status"] == "skip"
    assert "core routes are down" in report["stages"]["allocator"]
    assert check(report, "teardown.residue")["status"] == "pass"


def _restart_dockerd(lab: Config) -> float:
    assert lab.lab is not None
    return restart_dockerd(lab.lab)


def test_dockerd_restart_mid_reproduction_ends_with_a_verdict_and_zero_residue(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    def bigger_batch(raw: dict[str, Any]) -> None:
        raw["allocator"]["batch"] = 10

    config = write_config(tmp_path, bigger_batch)
    log, out = tmp_path / "run.log", tmp_path / "report.json"
    proc = spawn_run(config, log, "--json", str(out))
    try:
        run_id = wait_for_throwaways(engine, proc)
        away = _restart_dockerd(lab)
        rc = proc.wait(timeout=600)
        # A verdict (pass, or fail with the reason), never a crash or a hang.
        assert rc in (0, 1), log.read_text()[-3000:]
        report = json.loads(out.read_text())
        assert report["verdict"] in ("pass", "fail") and report["stages"]["teardown"] == "clean"
        assert not any(list_residue(engine, f"{LABEL_RUN}={run_id}").values())
        # A call that met the restart waited it out (the swarm seam's or the CLI's retry);
        # when the restart fell between two calls, there was nothing to retry.
        text = log.read_text()
        retried = "retrying docker call" in text or "the engine does not answer" in text
        assert retried or "stopped answering" not in text, f"engine away {away:.1f}s"
    finally:
        wait_routes(lab, 180)
    # The next run finds nothing of the first one left and passes on the recovered lab.
    rc, report = run(config, tmp_path)
    assert check(report, "teardown.janitor")["found"] == "reaped 0 dead run(s)"
    assert rc == 0, report["stages"]
