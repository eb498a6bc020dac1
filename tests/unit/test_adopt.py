"""Adopting a finished harness run as the deploy proof: the judge (pure) on results in the
record's schema-2 shape (tests/golden/record, hedgedoc run 608 after proxy was recreated at
05:38Z on 2026-06-13), the config section and the ways a run id comes in."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pvcheck.app.cli import main
from pvcheck.config import AdoptConfig, Config, load_config
from pvcheck.deploy import adopt
from pvcheck.errors import EXIT_USAGE
from pvcheck.flows.verify import RunParameters
from pvcheck.records import Status, docker_time
from tests.helpers import ROOT

RECORD = ROOT / "tests" / "golden" / "record"
SHIPPED = ROOT / "deployments" / "cc-ci.toml"
PROXY_CREATED = datetime(2026, 6, 13, 5, 38, 2, tzinfo=UTC)  # REVIEW-pvfix.md: 05:38Z
STARTED_608 = datetime(2026, 6, 13, 5, 52, tzinfo=UTC).timestamp()  # before its 06:07:48 finish
CONTROL_PLANE = {
    "traefik_ci_commoninternet_net": ["service traefik_ci_commoninternet_net_app"],
    "warm-keycloak_ci_commoninternet_net": ["service warm-keycloak_ci_commoninternet_net_app"],
}


def record(name: str = "pass") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((RECORD / f"results-schema2-{name}.json").read_text())
    return doc


@pytest.fixture(scope="module")
def shipped() -> Config:
    return load_config(SHIPPED)


def settings(cfg: Config, run: str = "608", **adopt_fields: Any) -> adopt.Settings:
    s = adopt.Settings.from_config(cfg, run)
    return replace(s, adopt=s.adopt.model_copy(update=adopt_fields)) if adopt_fields else s


FINISHED_608 = 1781330868.4  # the record fixture's `finished`: 2026-06-13T06:07:48Z
NOW = datetime(2026, 6, 13, 7, 0, tzinfo=UTC)


def found(doc: Any = None, **fields: Any) -> adopt.Found:
    base = adopt.Found(
        data=json.dumps(record() if doc is None else doc).encode(),
        error="",
        where="ssh cc-ci cat /var/lib/cc-ci-runs/608/results.json",
        build=adopt.DroneBuild(608, "success", STARTED_608, FINISHED_608 + 20),
        network_created=PROXY_CREATED,
        stacks=dict(CONTROL_PLANE),
        now=NOW,
        seconds=0.2,
    )
    return replace(base, **fields)


def by_id(checks: list[Any]) -> dict[str, Any]:
    return {c.id: c for c in checks}


def test_run_608_is_adopted_with_every_tier_and_a_clean_teardown(shipped: Config) -> None:
    checks, run = adopt.judge(found(), settings(shipped))
    got = by_id(checks)
    assert {c.status for c in checks} == {Status.PASS}, [c for c in checks if c.status != "pass"]
    assert set(got) == {
        "deploy.adopted",
        "deploy.no-secret-leak",
        *(f"deploy.tier.{t}" for t in shipped.deploy.tiers),  # type: ignore[union-attr]
        "deploy.teardown",
    }
    assert got["deploy.adopted"].found == "run 608 (recipe hedgedoc) finished 2026-06-13T06:07:48Z"
    detail = got["deploy.adopted"].detail
    assert "Drone build 608 started 2026-06-13T05:52:00Z" in detail
    assert "network proxy created 2026-06-13T05:38:02Z" in detail
    assert "https://ci.commoninternet.net/runs/608/results.json" in detail
    assert got["deploy.teardown"].found == "0 objects left"  # the control plane is not hedgedoc's
    assert run.run == "608" and run.recipe == "hedgedoc" and run.finished == "2026-06-13T06:07:48Z"
    assert run.link == "https://ci.commoninternet.net/runs/608/results.json"


def test_a_run_that_started_before_the_fix_is_refused(shipped: Config) -> None:
    early = datetime(2026, 6, 13, 5, 30, tzinfo=UTC).timestamp()
    build = adopt.DroneBuild(608, "success", early, FINISHED_608 + 20)
    checks, _ = adopt.judge(found(build=build), settings(shipped))
    (check,) = checks  # nothing else is judged of a run that cannot count
    assert check.id == "deploy.adopted" and check.status == Status.FAIL
    assert "may have started before the fix (network proxy created 2026-06-13T05:38:02Z)" in (
        check.detail
    )


def test_a_configured_fix_time_later_than_the_network_wins(shipped: Config) -> None:
    later = datetime(2026, 6, 13, 10, 0, tzinfo=timezone(timedelta(hours=2)))  # 08:00Z
    s = settings(shipped, fixed_at=later)
    (check,) = adopt.judge(found(), s)[0]
    assert check.status == Status.FAIL
    assert "deploy.adopt.fixed_at 2026-06-13T08:00:00Z" in check.detail


def test_without_a_build_start_the_run_is_bounded_by_the_longest_run(shipped: Config) -> None:
    """No Drone answer: the run started at the earliest max_run_s before it finished. Run 608
    finished 30 min after the fix: it cannot be told from a run that started before it."""
    no_drone = found(build=None)
    (check,) = adopt.judge(no_drone, settings(shipped))[0]
    assert check.status == Status.FAIL
    assert "started at the earliest 2026-06-13T05:07:48Z" in check.detail
    assert "deploy.adopt.max_run_s 3600" in check.detail
    checks, _ = adopt.judge(no_drone, settings(shipped, max_run_s=1200))
    assert by_id(checks)["deploy.adopted"].status == Status.PASS


def test_a_run_whose_stack_is_still_there_is_refused_naming_it(shipped: Config) -> None:
    stacks = {
        **CONTROL_PLANE,
        "hedg-1a2b3c_ci_commoninternet_net": [
            "service hedg-1a2b3c_ci_commoninternet_net_app",
            "volume hedg-1a2b3c_ci_commoninternet_net_uploads",
        ],
        # another recipe's run: not hedgedoc's, not counted
        "cust-e084bd_ci_commoninternet_net": ["service cust-e084bd_ci_commoninternet_net_app"],
    }
    checks, _ = adopt.judge(found(stacks=stacks), settings(shipped))
    teardown = by_id(checks)["deploy.teardown"]
    assert teardown.status == Status.FAIL
    assert teardown.found == (
        "2 objects left (service hedg-1a2b3c_ci_commoninternet_net_app, "
        "volume hedg-1a2b3c_ci_commoninternet_net_uploads)"
    )
    assert teardown.detail == (
        "stacks of hedgedoc's runs on the host now: hedg-1a2b3c_ci_commoninternet_net"
    )


def test_a_run_that_did_not_report_a_clean_teardown_fails_it(shipped: Config) -> None:
    doc = record()
    doc["flags"]["clean_teardown"] = False
    teardown = by_id(adopt.judge(found(doc), settings(shipped))[0])["deploy.teardown"]
    assert teardown.status == Status.FAIL
    assert teardown.detail == "the harness reported clean_teardown=False"


def test_a_failed_rung_fails_its_tier(shipped: Config) -> None:
    doc = record("upgrade-error")
    doc.update(run_id=608, finished=FINISHED_608, recipe="hedgedoc")
    checks = by_id(adopt.judge(found(doc), settings(shipped))[0])
    assert checks["deploy.adopted"].status == Status.PASS
    assert checks["deploy.tier.upgrade"].status == Status.FAIL


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({**record(), "run_id": 607}, "names run 607, not 608"),
        ({k: v for k, v in record().items() if k != "finished"}, "gives no finished time"),
        ({**record(), "finished": True}, "gives no finished time"),
        ({**record(), "recipe": "a`b"}, "names no recipe"),
        ({**record(), "recipe": "hedgedoc\n"}, "names no recipe"),
        ({**record(), "finished": float("nan")}, "gives no finished time"),
        ({**record(), "finished": 10**400}, "gives no finished time"),
        (
            {**record(), "recipe": "bluesky-pds"},
            "recipe bluesky-pds is not one deploy.adopt.recipes lets stand for the proof "
            "(custom-html, hedgedoc)",
        ),
        (
            {**record(), "finished": NOW.timestamp() + 3600},
            "later than now (2026-06-13T07:00:00Z)",
        ),
    ],
)
def test_results_that_are_not_the_runs_are_refused(
    shipped: Config, doc: dict[str, Any], why: str
) -> None:
    (check,) = adopt.judge(found(doc), settings(shipped))[0]
    assert check.status == Status.FAIL and check.found == "refused"
    assert check.detail.endswith(why)


def test_an_unreadable_results_file_is_refused_with_its_reason(shipped: Config) -> None:
    missing = found(data=None, error="the harness wrote no results file")
    (check,) = adopt.judge(missing, settings(shipped))[0]
    assert check.status == Status.FAIL and check.detail == "the harness wrote no results file"


def test_no_fix_time_is_a_refusal(shipped: Config) -> None:
    (check,) = adopt.judge(found(network_created=None), settings(shipped))[0]
    assert check.status == Status.FAIL
    assert "no fix time: network proxy not found and deploy.adopt.fixed_at unset" in check.detail


def test_run_stacks_by_pattern_and_prefix(shipped: Config) -> None:
    stacks: dict[str, list[str]] = {
        "n8n-0a1b2c_ci_commoninternet_net": [],
        "n8nx-0a1b2c_ci_commoninternet_net": [],
        "n8n_ci_commoninternet_net": [],  # not a run's (the pattern refuses it)
    }
    s = settings(shipped)
    assert adopt.run_stacks(s, "n8n", stacks) == [
        "n8n-0a1b2c_ci_commoninternet_net",
        "n8nx-0a1b2c_ci_commoninternet_net",  # over-counted (could be n8nx's): refused, safe
    ]
    every = settings(shipped, stack_prefix_chars=0)
    assert len(adopt.run_stacks(every, "hedgedoc", stacks)) == 2


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-06-13T05:38:02.123456789Z", datetime(2026, 6, 13, 5, 38, 2, 123456, tzinfo=UTC)),
        ("2026-06-13T07:38:02+02:00", datetime(2026, 6, 13, 5, 38, 2, tzinfo=UTC)),
        ("2026-06-13T05:38:02Z", datetime(2026, 6, 13, 5, 38, 2, tzinfo=UTC)),
        ("2026-06-13 05:38:02", None),
        ("2026-13-13T05:38:02Z", None),
        ("", None),
    ],
)
def test_docker_time(text: str, want: datetime | None) -> None:
    assert docker_time(text) == want


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"results_path": "/var/lib/cc-ci-runs/results.json"}, "results_path"),
        ({"results_path": "runs/{run}/results.json"}, "results_path"),
        ({"results_path": "/r/{run}.json", "results_url": "file:///{run}"}, "results_url"),
        ({"results_path": "/r/{run}.json", "fixed_at": datetime(2026, 6, 13)}, "fixed_at"),
        ({"results_path": "/r/{run}.json", "max_run_s": 0}, "max_run_s"),
    ],
)
def test_adopt_config_refuses(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AdoptConfig(**fields)
    assert exc.value.errors()[0]["loc"][0] == field


def test_run_parameters_take_a_run_id_only() -> None:
    assert RunParameters(adopt="608").adopt == "608"
    assert RunParameters(adopt="m2r-bluesky-pds").adopt == "m2r-bluesky-pds"
    for bad in ("../608", "-608", "6 08", "a" * 65):
        with pytest.raises(ValidationError):
            RunParameters(adopt=bad)


def test_cli_refuses_a_bad_run_id_and_a_config_without_adopt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(SHIPPED), "--adopt", "../etc"]) == EXIT_USAGE
    assert "--adopt" in capsys.readouterr().err
    lab = ROOT / "lab" / "pvcheck.toml"
    assert main(["run", "--config", str(lab), "--adopt", "608"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "deploy.adopt" in err and str(lab) in err


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (adopt.DroneBuild(608, error="DroneError: Drone answered 404"), "Drone could not be asked"),
        (adopt.DroneBuild(608, "running", STARTED_608), "Drone build 608 is running, not a"),
        (adopt.DroneBuild(608, "failure", STARTED_608, FINISHED_608), "is failure, not a success"),
        (adopt.DroneBuild(608, "success", float("inf"), FINISHED_608), "gives no start or end"),
        (adopt.DroneBuild(608, "success", STARTED_608, None), "gives no start or end time"),
        (adopt.DroneBuild(608, "success", 10**400, FINISHED_608), "gives no start or end time"),
        # Drone's build 608 ended long before these results were written: another run's file.
        (
            adopt.DroneBuild(608, "success", STARTED_608, STARTED_608 + 60),
            "and its results say they were written 2026-06-13T06:07:48Z: not this build's",
        ),
        (
            adopt.DroneBuild(608, "success", FINISHED_608 + 600, FINISHED_608 + 900),
            "not this build's",
        ),
    ],
)
def test_a_build_drone_cannot_vouch_for_is_refused(
    shipped: Config, build: adopt.DroneBuild, why: str
) -> None:
    (check,) = adopt.judge(found(build=build), settings(shipped))[0]
    assert check.status == Status.FAIL and why in check.detail


def test_the_adopted_run_carries_the_digest_of_what_was_read(shipped: Config) -> None:
    first = adopt.judge(found(), settings(shipped))[1]
    doc = record()
    doc["level"] = 4
    second = adopt.judge(found(doc), settings(shipped))[1]
    assert len(first.digest) == 64 and first.digest != second.digest


def test_a_stack_the_results_name_must_be_gone_too(shipped: Config) -> None:
    doc = {**record(), "stack": "hedgedoc-608"}  # not a name the pattern admits
    stacks = {**CONTROL_PLANE, "hedgedoc-608": ["service hedgedoc-608_app"]}
    teardown = by_id(adopt.judge(found(doc, stacks=stacks), settings(shipped))[0])[
        "deploy.teardown"
    ]
    assert teardown.status == Status.FAIL and "hedgedoc-608" in teardown.detail


ROOTS = "0 0 755 directory\n0 0 755 directory\n0 0 755 directory\n"  # /, /var, /var/lib


@pytest.mark.parametrize(
    ("stat", "why"),
    [
        ("0 0 755 directory\n0 0 755 directory\n0 0 644 regular file\n", None),
        ("0 0 755 directory\n0 0 755 directory\n0 0 644 regular empty file\n", None),
        ("0 0 1777 directory\n0 0 755 directory\n0 0 644 regular file\n", None),  # sticky above
        ("0 0 755 directory\n0 0 755 directory\n0 0 644 fifo\n", "is a fifo, not a regular"),
        ("0 0 755 directory\n0 0 755 directory\n0 0 777 symbolic link\n", "symbolic link"),
        ("0 0 755 directory\n0 0 755 directory\n1000 0 644 regular file\n", "uid 1000"),
        ("0 0 755 directory\n0 0 1777 directory\n0 0 644 regular file\n", "writable by"),
        ("0 0 755 directory\n0 50 775 directory\n0 0 644 regular file\n", "group 50"),
        ("0 0 775 directory\n0 0 755 directory\n0 0 644 regular file\n", None),  # group root
        ("0 0 755 directory\n0 0 644 regular file\n", "could not be read"),
    ],
)
def test_a_results_file_on_the_host_is_read_only_when_root_alone_wrote_it(
    stat: str, why: str | None
) -> None:
    """`stat` of every level from / down (the runs folder, the run's, the file last)."""
    from pvcheck.harnessresults import host_file_problem

    problem = host_file_problem(ROOTS + stat, Path("/var/lib/cc-ci-runs/608/results.json"))
    assert problem == why if why is None else why in (problem or "")
    if why is None:  # and a level above owned by another user is refused too
        other = ROOTS.replace("0 0 755", "1000 0 755", 1) + stat
        assert "/ is owned by uid 1000" in (
            host_file_problem(other, Path("/var/lib/cc-ci-runs/608/results.json")) or ""
        )


def test_an_engine_that_does_not_know_the_networks_age_gives_no_fix_time() -> None:
    assert docker_time("0001-01-01T00:00:00Z") is None  # Go's zero time
