"""The built wheel is a whole pvcheck: installed into a fresh virtualenv (not this checkout),
it renders evidence from its own templates and reads its own lab config."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

RENDER = """
import sys
from pathlib import Path
import pvcheck
assert "/fresh/" in pvcheck.__file__, pvcheck.__file__  # the wheel's copy, not the checkout
from pvcheck.config import LAB_CONFIG, load_config
from pvcheck.evidence import write_evidence
from pvcheck.records import Check, Gate, Status
from pvcheck.report import Report
cfg = load_config(LAB_CONFIG, {"docs": {"dir": sys.argv[1]}})
checks = [Check("route.dashboard", Gate.M1, Status.PASS, "HTTP 200", "HTTP 200")]
report = Report("pv-20261128000000-wheel1", "lab", str(LAB_CONFIG), "2026-11-28T00:00:00Z",
                "2026-11-28T00:00:05Z", checks=checks)
write_evidence(report, cfg)
print(LAB_CONFIG)
"""


def test_the_wheel_in_a_fresh_virtualenv_renders_status(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = dist.glob("pvcheck-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "templates/status_summary.md.j2",
        "templates/review_gate.md.j2",
        "lab/pvcheck.toml",
        "lab/recipes/notes/compose.yml",
        "lab/recipes/notes/.env.sample",
        "lab/upgrade-all/SKILL.md",
    ):
        assert shipped in names, shipped
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, timeout=300)
    pip = fresh / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # Its dependencies come from this interpreter's packages (no network needed); pvcheck
    # itself only from the wheel: a .pth names a folder, whose own .pth files (this
    # checkout's editable install) are never run.
    (site,) = (fresh / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    docs = tmp_path / "docs"
    done = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", RENDER, str(docs)],
        cwd=tmp_path,  # not the checkout: nothing of it on the path
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(site) in done.stdout  # the lab config came from the wheel too
    status = (docs / "STATUS-pvcheck.md").read_text()
    assert "## Latest run" in status and "pv-20261128000000-wheel1" in status
    version = subprocess.run(
        [str(fresh / "bin" / "pvcheck"), "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert version.stdout.strip() == "pvcheck 0.1.0"
