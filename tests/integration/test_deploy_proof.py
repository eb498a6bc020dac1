"""The deploy proof on the real lab: the compose driver deploys the notes recipe (shaped like a
Co-op Cloud recipe) with `docker stack deploy` through proxy, and runs its four tiers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest

from pvcheck.app.cli import main
from pvcheck.compose import prepare, read_env_file
from pvcheck.config import Config
from pvcheck.stackcli import DockerCli
from pvcheck.stacks import converged, list_residue, remove_labelled, wait_running
from pvcheck.swarm import LABEL_RUN, LABEL_STACK, Swarm
from tests.helpers import LAB_CONFIG, all_tiers, event_names, recorded_events, write_config
from tests.integration.test_flow_m1 import check, run

pytestmark = [pytest.mark.usefixtures("prefect_api")]

NOTES = LAB_CONFIG.parent / "recipes" / "notes"


def events(since: datetime, kind: str) -> list[tuple[str, str]]:
    """(action, name) of the engine's events of one kind since then."""
    client = docker.from_env()
    found = client.events(since=since, until=datetime.now(UTC), filters={"type": kind}, decode=True)
    # A volume's event names it by its ID (its name); the others carry a name attribute.
    return [(e["Action"], e["Actor"]["Attributes"].get("name", e["Actor"]["ID"])) for e in found]


def test_the_recipe_passes_all_four_tiers_through_proxy_and_leaves_nothing(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    with recorded_events() as seen:
        rc, report = run(write_config(tmp_path, all_tiers), tmp_path)
    assert rc == 0, report["stages"]
    assert report["stages"]["deploy"] == "pass"
    tiers = {
        t: check(report, f"deploy.tier.{t}")
        for t in ("install", "upgrade", "backup_restore", "functional")
    }
    assert {t: c["status"] for t, c in tiers.items()} == dict.fromkeys(tiers, "pass")
    assert tiers["upgrade"]["detail"].startswith("update completed;")
    assert "stack and volumes removed, redeployed, restored" in tiers["backup_restore"]["detail"]
    assert "/data/pvcheck-marker.txt -> 200" in tiers["backup_restore"]["detail"]
    assert tiers["functional"]["detail"] == "2 checks through the route"
    attached = check(report, "deploy.attached")
    (service,) = re.findall(r"(pvc-notes-\w+_app) seen on proxy", attached["found"])
    stack = service.removesuffix("_app")
    teardown = check(report, "deploy.teardown")
    assert teardown["status"] == "pass" and teardown["found"].startswith("0 objects left")
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())
    assert not any(list_residue(engine, f"{LABEL_STACK}={stack}").values())
    # The app's own network, its volume (removed and made again by backup/restore), its
    # rendered config and the secret pvcheck generated: created, and all gone again.
    made = {name for action, name in event_names(seen, "network") if action == "create"}
    assert f"{stack}_internal" in made
    volumes = [a for a, n in event_names(seen, "volume") if n == f"{stack}_content"]
    # Removed with its stack for the restore, then at teardown (an update's new task
    # mounting it is a `create` event too, so creates are not counted).
    assert volumes.count("destroy") == 2 and volumes[0] == "create", volumes
    secrets = [a for a, n in event_names(seen, "secret") if n == f"{stack}_api_key_v1"]
    assert secrets == ["create", "remove"]


def test_a_variable_the_env_file_lacks_fails_before_anything_is_created(
    lab: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "notes.env"
    env.write_text((NOTES / ".env.sample").read_text().replace("SECRET_API_KEY_VERSION=v1\n", ""))

    def without(raw: dict[str, Any]) -> None:
        raw["deploy"]["compose"]["env_file"] = str(env)

    since = datetime.now(UTC)
    config = write_config(tmp_path, without)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(NOTES / "compose.yml") in err and "SECRET_API_KEY_VERSION" in err
    assert not [
        e for kind in ("service", "network", "secret", "config") for e in events(since, kind)
    ]


def test_a_healthcheck_that_never_passes_fails_the_upgrade_and_swarm_rolls_back(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    def unhealthy_upgrade(raw: dict[str, Any]) -> None:
        # The next version answers a health path that does not exist: never healthy.
        raw["deploy"]["compose"]["upgrade_env"] = {"APP_VERSION": "2", "HEALTH_PATH": "/missing"}
        raw["deploy"]["tiers"] = ["install", "upgrade"]

    rc, report = run(write_config(tmp_path, unhealthy_upgrade), tmp_path)
    assert rc == 1
    assert check(report, "deploy.tier.install")["status"] == "pass"
    upgrade = check(report, "deploy.tier.upgrade")
    assert upgrade["status"] == "fail" and "swarm rolled the update back" in upgrade["detail"]
    assert "rollback_completed" in upgrade["detail"]
    assert check(report, "deploy.teardown")["status"] == "pass"
    assert not any(list_residue(engine, f"{LABEL_RUN}={report['run_id']}").values())


def test_recipe_whose_route_never_answers_fails_and_still_tears_down(
    lab: Config, engine: Swarm, tmp_path: Path
) -> None:
    def wrong_route(raw: dict[str, Any]) -> None:
        all_tiers(raw)
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
    # What the recipe sets is what swarm runs (through the CLI, not a re-implementation), and
    # every object it makes carries the labels pvcheck injected.
    stack, run_id = "pvc-settings", "test-deploy-settings"
    labels = {LABEL_RUN: run_id}
    env = {**read_env_file(NOTES / ".env.sample"), "STACK_NAME": stack, "DOMAIN": "s.lab.test"}
    compose, overridden = prepare(NOTES / "compose.yml", env, labels)
    assert overridden == []
    cli = DockerCli(lab.target.docker_host)
    try:
        cli.secret_create(f"{stack}_api_key_v1", b"not-a-real-secret", labels)
        cli.stack_deploy(stack, compose, {}, where="notes")
        states = wait_running(engine, stack, 60)
        assert converged(states) and list(states) == [f"{stack}_app"]
        (svc,) = engine.services({LABEL_RUN: run_id})
        spec = svc["Spec"]
        assert spec["UpdateConfig"]["Order"] == "start-first"
        assert spec["UpdateConfig"]["FailureAction"] == "rollback"
        task = spec["TaskTemplate"]
        assert task["ContainerSpec"]["Healthcheck"]["Test"][:2] == ["CMD", "wget"]
        assert task["ContainerSpec"]["Labels"][LABEL_RUN] == run_id
        assert spec["Labels"]["traefik.http.routers.pvc-settings.rule"] == "Host(`s.lab.test`)"
        assert spec["Labels"]["backupbot.backup"] == "true"
        for kind in ("networks", "volumes", "configs"):
            assert getattr(engine, kind)(f"{LABEL_RUN}={run_id}"), kind
    finally:
        cli.stack_rm([stack])
        left = remove_labelled(engine, f"{LABEL_RUN}={run_id}")
    assert not any(left.values())
