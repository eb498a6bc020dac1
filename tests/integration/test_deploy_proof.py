"""The deploy proof on the real lab: the compose driver deploys the hello recipe through proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvcheck.composefile import load_stack
from pvcheck.config import Config
from pvcheck.stacks import StackDeployer, converged, list_residue, remove_labelled
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.helpers import write_config
from tests.integration.test_flow_m1 import check, run

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_compose_deploy_proof_passes_and_leaves_nothing(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    rc, report = run(write_config(tmp_path), tmp_path)
    assert rc == 0, report["stages"]
    assert report["stages"]["deploy"] == "pass"
    for tier in ("install", "upgrade"):
        assert check(report, f"deploy.tier.{tier}")["status"] == "pass"
    assert "http://hello.lab.test/ -> 200" in check(report, "deploy.tier.upgrade")["detail"]
    br = check(report, "deploy.tier.backup_restore")
    assert br["status"] == "skip" and br["detail"].startswith("not applicable:")
    attached = check(report, "deploy.attached")
    assert attached["status"] == "pass" and "_app seen on proxy" in attached["found"]
    teardown = check(report, "deploy.teardown")
    assert teardown["status"] == "pass" and teardown["found"].startswith("0 objects left")
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())


def test_recipe_whose_route_never_answers_fails_and_still_tears_down(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    def wrong_route(raw: dict[str, Any]) -> None:
        raw["deploy"]["converge_timeout_s"] = 8
        raw["deploy"]["compose"]["route"]["url"] = "http://never.lab.test/"

    rc, report = run(write_config(tmp_path, wrong_route), tmp_path)
    assert rc == 1
    install = check(report, "deploy.tier.install")
    assert install["status"] == "fail" and "never.lab.test/ -> 404" in install["detail"]
    assert check(report, "deploy.tier.upgrade")["detail"] == "not attempted: install did not pass"
    assert check(report, "deploy.teardown")["status"] == "pass"
    assert report["stages"]["deploy"].startswith("fail (")
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())


def test_active_run_makes_the_proof_wait_then_skip(lab: Config, tmp_path: Path) -> None:
    active = tmp_path / "active"
    active.mkdir()
    (active / "custom-html.lab.test").write_text("")

    def with_active(raw: dict[str, Any]) -> None:
        raw["deploy"]["active_runs"] = {"folder": str(active), "wait_s": 2}

    rc, report = run(write_config(tmp_path, with_active), tmp_path)
    skipped = check(report, "deploy.active")
    assert skipped["status"] == "skip" and "another run or sweep is active" in skipped["detail"]
    assert "custom-html.lab.test" in skipped["detail"]
    assert report["gates"]["M2"]["status"] == "skip"
    status = (tmp_path / "docs" / "STATUS-pvcheck.md").read_text()
    assert "deploy: skipped: no new test traffic: another run or sweep is active" in status
    assert "Verdict: **INCOMPLETE** — M2 not proven — deploy.active: another run" in status
    # M1 passed and nothing failed, but M2 was not proven: never a pass, never exit 0.
    assert rc == 4 and report["verdict"] == "incomplete"
    assert check(report, "alloc.stage")["status"] == "skip"  # no throwaway either


def test_the_recipes_deploy_settings_reach_the_engine(lab: Config, engine: Swarm) -> None:
    # What the compose file sets under deploy: is what swarm runs, not silently dropped.
    recipe = Path(__file__).parents[2] / "lab" / "recipes" / "hello" / "compose.yml"
    label = f"{LABEL_RUN}=test-deploy-settings"
    deployer = StackDeployer(engine, dict([label.split("=")]))
    try:
        (name,) = deployer.deploy("pvc-settings", load_stack(recipe))
        states = deployer.wait_running("pvc-settings", 60)
        assert converged(states) and list(states) == [name]
        (svc,) = engine.services({LABEL_RUN: "test-deploy-settings"})
        task = svc["Spec"]["TaskTemplate"]
        assert task["RestartPolicy"]["Condition"] == "on-failure"
        assert task["RestartPolicy"]["MaxAttempts"] == 3
        assert task["Resources"]["Limits"]["MemoryBytes"] == 64 << 20
        assert task["Placement"]["Constraints"] == ["node.role == manager"]
        assert svc["Spec"]["UpdateConfig"]["Order"] == "start-first"
    finally:
        left = remove_labelled(engine, label)
    assert not any(left.values())
