"""results.json as cc-ci's harness writes it (schema 2), read into the tiers pvcheck judges.

The fixtures are tests/golden/record/results-schema2-*.json (their sources:
tests/golden/record/SOURCES.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pvcheck.deploy import judge_outcome
from pvcheck.harnessresults import ResultsError, parse_results
from pvcheck.records import Status
from pvcheck.seams import DeployOutcome, TierStatus

RECORD = Path(__file__).parents[1] / "golden" / "record"


def record(name: str) -> Any:
    return json.loads((RECORD / f"results-schema2-{name}.json").read_text())


def test_a_real_passing_run_reports_all_five_rungs_and_both_flags() -> None:
    doc = record("pass")
    assert len(doc) == 17  # the record's key count: a fixture that drifts from it fails here
    got = parse_results(doc)
    assert {t.tier: t.status for t in got.tiers} == {
        "install": TierStatus.PASS,
        "upgrade": TierStatus.PASS,
        "backup_restore": TierStatus.PASS,
        "functional": TierStatus.PASS,
        "lint": TierStatus.PASS,
    }
    by_tier = {t.tier: t.detail for t in got.tiers}
    # backup and restore are two stages of one rung; custom is the functional rung.
    assert by_tier["backup_restore"] == "backup: 1 tests pass; restore: 1 tests pass"
    assert by_tier["functional"] == "custom: 1 tests pass"
    assert got.clean_teardown is True and got.no_secret_leak is True
    assert got.info["run_id"] == "608" and got.info["level"] == "5" and got.info["schema"] == "2"


def test_an_intentional_skip_is_not_applicable_with_its_reason() -> None:
    got = {t.tier: t for t in parse_results(record("intentional-skip")).tiers}
    skip = got["backup_restore"]
    assert skip.status == TierStatus.SKIP and skip.not_applicable
    assert "not backup-capable" in skip.detail


def test_a_failed_lint_rung_names_the_rules() -> None:
    got = {t.tier: t for t in parse_results(record("lint-fail")).tiers}
    assert got["lint"].status == TierStatus.FAIL and "R011" in got["lint"].detail
    assert got["install"].status == TierStatus.PASS


def test_unverified_rungs_and_leak_flags_fail_the_deploy_proof() -> None:
    reported = parse_results(record("upgrade-error"))
    assert reported.info["run_id"] == "m2r-bluesky-pds"  # a named id, never an int
    outcome = DeployOutcome("drone", "bluesky-pds", "s", attached=True)
    outcome.take(reported)
    checks = {c.id: c for c in judge_outcome(outcome, ["install", "upgrade", "functional"], "p")}
    assert checks["deploy.tier.install"].status == Status.PASS
    assert checks["deploy.tier.upgrade"].status == Status.FAIL
    # unver: should have run and did not; never a pass, never a skip.
    assert checks["deploy.tier.functional"].status == Status.FAIL
    assert checks["deploy.no-secret-leak"].status == Status.FAIL
    assert outcome.clean_teardown_reported is False


def test_a_passing_run_with_lint_required_passes_every_tier_check() -> None:
    outcome = DeployOutcome("drone", "hedgedoc", "s", attached=True)
    outcome.take(parse_results(record("pass")))
    tiers = ["install", "upgrade", "backup_restore", "functional", "lint"]
    checks = judge_outcome(outcome, tiers, "proxy")
    assert [c.status for c in checks] == [Status.PASS] * 7  # attached, leak flag, five tiers


def test_older_files_are_read_from_their_stages_with_error_as_a_failure() -> None:
    doc = {
        "stages": [
            {"name": "backup", "status": "pass", "tests": []},
            {"name": "restore", "status": "error", "tests": []},
            {"name": "custom", "status": "skip", "tests": [], "reason": "no tests"},
        ]
    }
    got = {t.tier: t.status for t in parse_results(doc).tiers}
    assert got == {"backup_restore": TierStatus.FAIL, "functional": TierStatus.SKIP}


def test_a_pass_of_one_half_never_stands_for_a_skip_of_the_other() -> None:
    doc = {
        "stages": [
            {"name": "backup", "status": "pass", "tests": []},
            {"name": "restore", "status": "skip", "tests": []},
        ]
    }
    assert parse_results(doc).tiers[0].status == TierStatus.SKIP


@pytest.mark.faults
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"rungs": {"install": "great"}}, "rungs.install must be one of"),
        ({"rungs": ["install"]}, "schema 2 needs a 'rungs' object"),
        ({"stages": {"install": "pass"}}, "'stages' must be a list"),
        ({"stages": [{"name": "install", "status": "ok"}]}, r"stages\[0\].status"),
    ],
)
def test_a_schema_2_file_of_another_shape_is_refused(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ResultsError, match=error):
        parse_results(record("pass") | change)


@pytest.mark.faults
def test_hostile_text_in_a_results_file_is_bounded() -> None:
    doc = record("intentional-skip")
    doc["skips"]["intentional"]["backup_restore"] = "x" * 100_000
    doc["run_id"] = "y" * 100_000
    got = parse_results(doc)
    assert max(len(t.detail) for t in got.tiers) < 1000 and len(got.info["run_id"]) <= 200


def test_every_results_fixture_names_its_source() -> None:
    sources = (RECORD / "SOURCES.md").read_text()
    for path in sorted(RECORD.glob("results-*.json")):
        assert f"`{path.name}`" in sources, path.name


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"finished": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # past int's digit limit
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"stages": [{"name": "install", "status": []}]}', "stages[0].status must be one of"),
    ],
)
def test_a_hostile_results_file_is_a_results_error_never_a_crash(data: bytes, why: str) -> None:
    from pvcheck.harnessresults import decode_results

    with pytest.raises(ResultsError, match=re.escape(why)):
        parse_results(decode_results(data, "results.json"))
