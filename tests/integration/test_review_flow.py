"""run -> review -> done on the real lab, and a review that catches what a builder hid."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from pvcheck.app.cli import main
from pvcheck.config import Config
from pvcheck.lab import wait_routes
from pvcheck.protocol import has_done
from pvcheck.routes import probe_routes
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.helpers import write_config
from tests.integration.test_flow_m1 import run

pytestmark = [pytest.mark.usefixtures("prefect_api")]


def review(config: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "review.json"
    rc = main(["review", "--config", str(config), "--json", str(out)])
    return rc, json.loads(out.read_text())


def test_run_review_done_on_a_healthy_lab_keeps_notes(lab: Config, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    docs = tmp_path / "docs"
    assert main(["done", "--config", str(config)]) == 1  # nothing claimed yet
    assert run(config, tmp_path)[0] == 0
    notes = {
        name: f"\n## My notes on {name}\n\nkept by hand.\n"
        for name in ("STATUS", "BACKLOG", "JOURNAL")
    }
    for name, text in notes.items():
        path = docs / f"{name}-pvcheck.md"
        path.write_text(path.read_text() + text)
    assert main(["done", "--config", str(config)]) == 1  # claimed, but not yet reviewed
    assert not has_done((docs / "STATUS-pvcheck.md").read_text())
    rc, result = review(config, tmp_path)
    assert rc == 0, result["findings"]
    assert result["gates"]["M1"]["status"] == "pass" and result["gates"]["M2"]["status"] == "pass"
    review_text = (docs / "REVIEW-pvcheck.md").read_text()
    assert re.search(
        r"^## M1 — Control plane and routing verified: \*\*PASS\*\* @ \S+Z$", review_text, re.M
    )
    assert re.search(
        r"^## M2 — Real CI and allocator proof verified: \*\*PASS\*\* @ \S+Z$", review_text, re.M
    )
    status = (docs / "STATUS-pvcheck.md").read_text()
    assert "## Gate: M1 — PASS @" in status and "## Gate: M2 — PASS @" in status
    assert main(["done", "--config", str(config)]) == 0
    for name, text in notes.items():
        assert text in (docs / f"{name}-pvcheck.md").read_text()
    assert has_done((docs / "STATUS-pvcheck.md").read_text())
    # A newer claim withdraws DONE (docs.done_follows = "latest") until the next review.
    assert run(config, tmp_path)[0] == 0
    assert not has_done((docs / "STATUS-pvcheck.md").read_text())
    assert (
        "awaits review" in (docs / "JOURNAL-pvcheck.md").read_text().split("DONE withdrawn @")[-1]
    )
    assert main(["done", "--config", str(config)]) == 1
    for name, text in notes.items():
        assert text in (docs / f"{name}-pvcheck.md").read_text()


def test_review_catches_leftover_edited_number_and_broken_route(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    assert run(config, tmp_path)[0] == 0
    docs = tmp_path / "docs"
    status = docs / "STATUS-pvcheck.md"
    # The review compares the host with the numbers the run recorded in its JSON report.
    recorded = docs / "REPORT-pvcheck.json"
    original = recorded.read_text()
    doc = json.loads(original)
    doc["facts"]["after"]["network"]["capacity"] = 65534
    recorded.write_text(json.dumps(doc))
    client = docker.from_env()
    leftover = client.networks.create(
        "pvc-alloc-leftover-net", driver="overlay", labels={LABEL_RUN: "pv-20260101000000-0ld0ne"}
    )
    client.services.get("lab-dashboard_app").scale(0)  # type: ignore[no-untyped-call]
    try:
        dashboard = next(r for r in lab.routes if r.name == "dashboard")
        deadline = time.monotonic() + 60
        while probe_routes([dashboard], lab.http)[0].status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)  # the route is broken once the task is really gone
        rc, result = review(config, tmp_path)
    finally:
        leftover.remove()
        client.services.get("lab-dashboard_app").scale(1)  # type: ignore[no-untyped-call]
        wait_routes(lab, 60)
    assert rc == 1
    assert result["gates"]["M1"]["status"] == "fail" and result["gates"]["M2"]["status"] == "fail"
    titles = " | ".join(f["title"] for f in result["findings"])
    assert "the run's report says capacity = 65534, the host shows 65533" in titles
    assert "leftover carrying a pvcheck run label: network pvc-alloc-leftover-net" in titles
    assert "route.dashboard" in titles
    review_text = (docs / "REVIEW-pvcheck.md").read_text()
    assert "**FAIL**" in review_text and "Repro:" in review_text
    backlog = (docs / "BACKLOG-pvcheck.md").read_text()
    assert backlog.count("[adversary] leftover carrying a pvcheck run label") == 1
    assert "**Status:** OPEN" in backlog
    status_text = status.read_text()
    assert "## Gate: M1 — CLAIMED, awaiting Adversary" in status_text  # not marked PASS
    # Fixed on the host: a second review marks the findings FIXED, and files none twice.
    recorded.write_text(original)
    rc, result = review(config, tmp_path)
    backlog = (docs / "BACKLOG-pvcheck.md").read_text()
    assert backlog.count("[adversary] leftover carrying a pvcheck run label") == 1
    assert "no longer reproducible" in backlog
    assert rc == 0, result["findings"]


def test_review_of_unclaimed_gates_passes_nothing(lab: Config, tmp_path: Path) -> None:
    rc, result = review(write_config(tmp_path), tmp_path)
    assert rc == 1
    assert (
        result["gates"]["M1"]["status"] == "fail" and result["gates"]["M1"]["claim_run_id"] is None
    )
    assert "No claim for M1 in STATUS" in (tmp_path / "docs" / "REVIEW-pvcheck.md").read_text()
