"""Faults on the real lab (the start of issue 8's table): a second run on a busy host, a full
disk under machine-docs, a malformed state file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcheck.cli import main
from pvcheck.config import Config
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, Swarm
from tests.helpers import ROOT, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_second_run_on_a_busy_host_refuses_and_the_first_is_unaffected(
    lab: Config, engine: Swarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "pvcheck.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 180
    while not engine.services({LABEL_ROLE: "throwaway"}):  # the first run is mid-way
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert main(["run", "--config", str(config)]) == 5
    assert "another pvcheck run holds" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert not any(list_residue(engine, LABEL_RUN).values())


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A machine-docs folder on a tiny tmpfs that is already full."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=False
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_keeps_old_files_and_names_the_file(
    lab: Config, engine: Swarm, tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def docs_on_full_disk(raw: dict[str, Any]) -> None:
        raw["docs"]["dir"] = str(full_disk)

    config = write_config(tmp_path, docs_on_full_disk)
    (full_disk / "STATUS-pvfix.md").write_text("# pvfix\n\n## DONE\n")
    status = full_disk / "STATUS-pvcheck.md"
    status.write_text("# STATUS\n\nold notes\n")
    with contextlib.suppress(OSError), open(full_disk / "filler", "wb") as fh:  # fill the disk
        while True:
            fh.write(b"x" * 4096)
            fh.flush()
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(full_disk) in err
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
