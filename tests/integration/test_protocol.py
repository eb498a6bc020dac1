"""The Builder/Adversary protocol on the lab, as the cc-ci loop runs it: claims and reviews
become commits of a docs repository, DONE follows the truth, churn is told apart from a leak,
and a VETO stops `done`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config, load_config
from pvcheck.protocol import has_done
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.helpers import write_config
from tests.integration.test_flow_m1 import run

pytestmark = [pytest.mark.usefixtures("prefect_api")]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def review(config: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "review.json"
    rc = main(["review", "--config", str(config), "--json", str(out)])
    return rc, json.loads(out.read_text())


@pytest.fixture
def on_proxy() -> Iterator[list[str]]:
    """Services a test starts on `proxy` (as another CI job would); removed afterwards."""
    client = docker.from_env()
    names: list[str] = []
    yield names
    for name in names:
        for service in client.services.list(filters={"name": name}):
            service.remove()  # type: ignore[no-untyped-call]


def start_on_proxy(names: list[str], name: str, labels: dict[str, str] | None = None) -> None:
    client = docker.from_env()
    image = client.images.get("local/busybox:1").id
    service = client.services.create(  # type: ignore[no-untyped-call]
        image,
        ["sleep", "3600"],
        name=name,
        labels=labels or {},
        networks=["proxy"],
        stop_signal="KILL",
    )
    names.append(name)
    for _ in range(60):  # its task holds its address once it runs
        if any(t["Status"]["State"] == "running" for t in service.tasks()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not start")


def docs_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A git repository holding a person's file and the docs folder; pvcheck commits on."""
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o755)
    git(repo, "init", "-q")
    (repo / "notes.md").write_text("# notes by hand\n")
    git(repo, "add", "notes.md")
    git(repo, "-c", "user.name=A Person", "-c", "user.email=a@person", "commit", "-qm", "notes")

    def commit(raw: dict[str, Any]) -> None:
        raw["docs"]["commit"] = True
        raw["docs"]["author"] = "pvcheck-ci <pvcheck@lab.test>"

    return repo, write_config(repo, commit)


@pytest.mark.slow
def test_claim_review_done_withdraw_veto_as_commits(
    lab: Config, engine: Swarm, tmp_path: Path, on_proxy: list[str], capsys: Any
) -> None:
    repo, config = docs_repo(tmp_path)
    docs = repo / "docs"
    status, journal, review_md = (docs / f"{k}-pvcheck.md" for k in ("STATUS", "JOURNAL", "REVIEW"))
    owned = {str(p.relative_to(repo)) for p in load_config(config).docs.paths.owned}
    (repo / "notes.md").write_text("# notes by hand\n\nedited, not staged\n")

    rc, report = run(config, tmp_path)
    assert rc == 0, report["stages"]
    run_id = report["run_id"]
    assert git(repo, "log", "-1", "--format=%s %an <%ae>").strip() == (
        f"claim(pvcheck): M1 M2 by run {run_id} pvcheck-ci <pvcheck@lab.test>"
    )
    # HOW names the docs by their path in the repository: it pastes from a fresh clone.
    assert "grep -x '## DONE' docs/STATUS-pvfix.md" in status.read_text()

    rc, result = review(config, tmp_path)
    assert rc == 0, result["findings"]
    assert git(repo, "log", "-1", "--format=%s").strip() == (
        f"review(pvcheck-M1+M2): M1 PASS, M2 PASS — re-verified from live commands "
        f"(run {result['review_id']})"
    )
    assert main(["done", "--config", str(config)]) == 0
    assert has_done(status.read_text())

    # Another CI job deploys on proxy between the claim and the review: churn, not a leak.
    start_on_proxy(on_proxy, "ci-churn-job_app")
    rc, result = review(config, tmp_path)
    assert rc == 0, result["findings"]
    assert any("ci-churn-job_app" in line for line in result["churn"])
    assert has_done(status.read_text())
    for gate, title in (("M1", "Control plane"), ("M2", "Real CI")):
        passes = re.findall(
            rf"^## {gate} — {title}.*: \*\*PASS\*\* @ \S+Z$", review_md.read_text(), re.M
        )
        assert len(passes) == 2, passes  # two reviews, two dated entries

    # A service carrying the run's label on proxy fails M2 and withdraws DONE.
    start_on_proxy(on_proxy, "pvc-planted_app", {LABEL_RUN: run_id})
    rc, result = review(config, tmp_path)
    assert rc == 1 and result["gates"]["M2"]["status"] == "fail"
    assert result["gates"]["M1"]["status"] == "pass"
    assert any(
        "still held by pvcheck's pvc-planted_app" in f for f in result["gates"]["M2"]["findings"]
    )
    assert not any("ci-churn-job_app" in f for f in result["gates"]["M2"]["findings"])
    assert not has_done(status.read_text())
    withdrawn = journal.read_text().split("DONE withdrawn @")[-1]
    assert f"review {result['review_id']} failed M2" in withdrawn
    assert "pvc-planted_app" in withdrawn

    # A VETO blocks done, though the review passes again once the leftover is gone.
    docker.from_env().services.get("pvc-planted_app").remove()  # type: ignore[no-untyped-call]
    on_proxy.remove("pvc-planted_app")
    with review_md.open("a") as fh:
        fh.write("\n## VETO\n\nNot until the dashboard's backups are checked by hand.\n")
    rc, result = review(config, tmp_path)
    assert rc == 0, result["findings"]
    capsys.readouterr()
    assert main(["done", "--config", str(config)]) == 1
    said = capsys.readouterr().out
    assert "VETO at" in said and "dashboard's backups are checked by hand" in said
    assert not has_done(status.read_text())

    # Every commit but the person's is pvcheck's, with its prefix and only its files.
    subjects = git(repo, "log", "--format=%s").splitlines()
    assert subjects[-1] == "notes" and len(subjects) >= 6
    for n, subject in enumerate(subjects[:-1]):
        # A review's scope names the gates it reviewed, as the Adversary's commits do.
        scope = r"pvcheck(-M1\+M2|-M1|-M2)?" if subject.startswith("review") else "pvcheck"
        assert re.match(rf"^(claim|review|done|evidence)\({scope}\): ", subject), subject
        files = set(git(repo, "show", "--name-only", "--format=", f"HEAD~{n}").split())
        assert files and files <= owned, (subject, files - owned)
    assert git(repo, "status", "--porcelain", "notes.md").startswith(" M")
