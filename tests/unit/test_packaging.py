"""The built wheel is a whole pvcheck: installed into a fresh virtualenv (not this checkout),
it puts one package into site-packages, renders evidence from its own templates, reads its
own lab config and checks the shipped configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

NOT_SOURCE = (".git", ".venv", "build", "dist", "out", "*.egg-info", "__pycache__", ".*_cache")

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
    # From a copy of the source tree (its links kept): a stale build/ folder of this checkout
    # would otherwise slip old modules into the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = dist.glob("pvcheck-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "pvcheck/templates/status_summary.md.j2",
        "pvcheck/templates/review_gate.md.j2",
        "pvcheck/labdata/pvcheck.toml",
        "pvcheck/labdata/cc-ci-twin.toml",
        "pvcheck/labdata/recipes/notes/compose.yml",
        "pvcheck/labdata/recipes/notes/.env.sample",
        "pvcheck/labdata/upgrade-all/SKILL.md",
        "pvcheck/deployments/cc-ci.toml",
        "pvcheck/deployments/cc-ci-on-host.toml",
        "pvcheck/flows/verify.py",
        "pvcheck/tasks/engine.py",
        "pvcheck/app/cli.py",
    ):
        assert shipped in names, shipped
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, timeout=300)
    pip = fresh / "bin" / "pip"
    (site,) = (fresh / "lib").glob("python3*/site-packages")
    before = set(p.name for p in site.iterdir())
    subprocess.run([str(pip), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # One package, nothing at the top level that could collide with other software.
    assert set(p.name for p in site.iterdir()) - before == {"pvcheck", "pvcheck-0.1.0.dist-info"}
    # Its dependencies come from this interpreter's packages (no network needed); pvcheck
    # itself only from the wheel: a .pth names a folder, whose own .pth files (this
    # checkout's editable install) are never run.
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
    # The shipped configs, as the wheel holds them, pass `pvcheck config check`.
    for shipped in (
        "labdata/pvcheck.toml",
        "labdata/cc-ci-twin.toml",
        "deployments/cc-ci.toml",
        "deployments/cc-ci-on-host.toml",
    ):
        checked = subprocess.run(
            [str(fresh / "bin" / "pvcheck"), "config", "check", str(site / "pvcheck" / shipped)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert checked.returncode == 0, (shipped, checked.stderr[-2000:])
