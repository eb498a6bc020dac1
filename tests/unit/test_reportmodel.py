"""The run's JSON report is one model (pvcheck.reportmodel): the writer dumps it, the review
reads it back through it, `pvcheck report-schema` prints its schema. The shape written is
pinned by a golden file; every value the review decides on is refused, naming its field,
when pvcheck could not have written it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pvcheck.allocator import RoundFigures, forecasts
from pvcheck.capacity import HeldCount
from pvcheck.config import load_config
from pvcheck.errors import PvcheckError, StateFileError
from pvcheck.records import FIGURES, Check, Gate, Outcome, Stage, StageOutcome, Status
from pvcheck.report import DocsOutcome, Report
from pvcheck.reportmodel import (
    MAX_PROBE_IDS,
    AllocatorPart,
    CheckRecord,
    DocsPart,
    ForecastPart,
    HeldCountPart,
    HostFactsPart,
    LogScanPart,
    NetworkPart,
    ReportDocument,
    RoundPart,
    ServicePart,
    field_path,
    refusal,
    report_schema,
)
from pvcheck.review import read_recorded, recorded_from_json
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import GOLDEN, golden, sample_report


def full_report() -> Report:
    """A failing run with every part of the report filled in: per-service figures, the deploy
    proof's stacks, docs outcome, probe IDs, every allocator count and two forecasts."""
    report = sample_report(True)
    assert report.facts_after is not None and report.facts_after.network is not None
    assert report.run_logs is not None and report.allocator is not None
    net = dataclasses.replace(
        report.facts_after.network, per_service={"lab-drone_app": 2, "lab-traefik_app": 3}
    )
    report.facts_after = dataclasses.replace(report.facts_after, network=net)
    report.target_via = "ssh root@cc-ci (host key /etc/pvcheck/known_hosts)"
    report.deploy_stacks = ["pvc-notes-1a2b", "pvc-notes-1a2b-db"]
    report.evidence = {"json": "/srv/out/report.json", "junit": "(stdout)"}
    report.docs = DocsOutcome(["STATUS line 9: hold"], "run failed M1", "abc1234")
    report.stages[Stage.ALLOCATOR] = StageOutcome(Outcome.FAIL, "alloc.leak")
    report.checks.append(
        Check("alloc.scratch", Gate.M2, Status.SKIP, "e", "not run", "n/a", 1.5, True)
    )
    report.run_logs = dataclasses.replace(
        report.run_logs,
        probe_ids=["k2x9", "p0q1"],
        counts={"vip_exhausted": 0, "vip_probe": 2},
        lines=[
            'time="2026-11-26T12:00:03Z" msg="could not find an available IP while allocating VIP"'
        ],
        truncated=True,
    )
    alloc = report.allocator
    counts = {"vips": 5, "task_ips": 5, "lb_endpoints": 1, "containers": 0}
    grown = dict(counts, task_ips=7)
    alloc.rounds.append(
        RoundFigures(
            2,
            5,
            counts,
            grown,
            grown,
            True,
            False,
            6.25,
            2,
            -1,
            ["s1_internal"],
            ["s1_internal"],
            ["s1: network in use"],
        )
    )
    alloc.scratch_left = True
    alloc.scratch_count = HeldCount("pvc-scratch-abc123", 253, 0, 243, True, "ipam-status")
    alloc.shared_before = HeldCount("proxy", 65533, 11, 65522, False, "fill-probe")
    alloc.shared_after = HeldCount("proxy", 65533, 13, 65520, True, "endpoints")
    alloc.ingress = HeldCount("ingress", 253, 3, 250, True, "ipam-status")
    alloc.probe_s = 12.5
    alloc.ingress_removals_per_day = 4.0
    alloc.rate_source = "docker events (7 days)"
    alloc.engine_version = "27.3.1"
    return report


def written(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(report.to_json())
    return doc


# --- the shape written ------------------------------------------------------------------------


def test_the_report_written_is_the_golden_one_byte_for_byte() -> None:
    """The keys, their order and every value as REPORT json and `run --json` held them
    before the model; the engine advice is prose that follows KNOWN_FIXES, so it is left
    out of the comparison."""
    report = full_report()
    assert report.allocator is not None
    text = report.to_json()
    advice = json.dumps(written(report)["allocator"]["advice"])
    assert text.count(advice) == 1
    golden("report-full.json", text.replace(advice, '"<engine advice>"'))


def test_every_key_a_part_writes_is_in_the_model_and_no_other() -> None:
    """Each part's keys are the model's fields, in order: a key a record writes that the
    model lacks is refused when writing, and one the model has that the record lacks would
    be written as its default."""
    report = full_report()
    alloc = report.allocator
    facts = report.facts_after
    assert alloc is not None and facts is not None and facts.network is not None
    assert alloc.scratch_count is not None and report.run_logs is not None
    parts: list[tuple[type[Any], dict[str, Any]]] = [
        (CheckRecord, report.checks[0].as_dict()),
        (HostFactsPart, facts.as_dict()),
        (NetworkPart, facts.network.as_dict()),
        (ServicePart, facts.as_dict()["services"][0]),
        (LogScanPart, dataclasses.asdict(report.run_logs)),
        (DocsPart, dataclasses.asdict(report.docs)),
        (AllocatorPart, alloc.as_dict()),
        (RoundPart, alloc.as_dict()["rounds"][0]),
        (HeldCountPart, alloc.scratch_count.as_dict()),
        (ForecastPart, forecasts(alloc)[0].as_dict()),
    ]
    for model, part in parts:
        assert list(part) == list(model.model_fields), model.__name__
    top = list(written(report))
    assert top == list(ReportDocument.model_fields)
    assert "allocator" not in written(Report("pv-1", "t", "c.toml", "x"))  # it did not run


def test_a_full_report_round_trips_writer_json_reader(tmp_path: Path) -> None:
    report = full_report()
    path = tmp_path / "REPORT-pvcheck.json"
    path.write_text(report.to_json())
    # The model reads back exactly what it wrote.
    doc = ReportDocument.model_validate_json(path.read_bytes())
    assert doc.model_dump(mode="json") == json.loads(path.read_text())
    assert doc == report.document()
    # The review's numbers are the run's.
    got = read_recorded(path)
    assert got is not None and report.allocator is not None and report.run_logs is not None
    net = report.facts_after.network if report.facts_after else None
    assert net is not None
    assert got.run_id == report.run_id
    assert got.network == {
        "subnet": net.subnet,
        "capacity": str(net.capacity),
        "service VIPs": str(net.vips),
        "task IPs": str(net.task_ips),
        "LB endpoints": str(net.lb_endpoints),
        "other containers": str(net.containers),
    }
    assert got.services == {"lab-traefik_app": "1/1", "lab-drone_app": "0/1"}
    assert (got.used, got.per_service, got.containers) == (net.used, net.per_service, 0)
    assert got.deploy_stacks == report.deploy_stacks
    assert got.allocator == report.allocator.figures()
    assert got.run_logs == (report.run_logs.since, report.run_logs.until)
    assert got.probe_ids == ("k2x9", "p0q1")


def test_a_report_of_an_older_version_reads_and_unknown_keys_are_ignored() -> None:
    doc = written(full_report())
    for key in ("deploy", "docs", "target_via", "incomplete_reason"):
        del doc[key]
    after = doc["facts"]["after"]
    del after["network"]["per_service"], doc["run_logs"]["probe_ids"]
    for key in ("peak", "scratch", "forecast", "engine_version", "advice", "scratch_count"):
        del doc["allocator"][key]
    for part in (doc, after, after["network"], doc["allocator"], doc["run_logs"]):
        part["written_by_a_later_version"] = {"x": [1, "y"]}
    doc["allocator"]["probe_ids"] = ["abc"]  # as versions before 8b26e0b wrote it
    got = recorded_from_json(doc, "R")
    assert got.per_service is None and got.probe_ids == () and got.deploy_stacks == []
    # A figure the report does not hold is compared as absent (a finding), never as 0.
    assert got.allocator is not None and set(got.allocator) == set(FIGURES) - {"peak"}


# --- what the review refuses ------------------------------------------------------------------


def _with(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *path, last = dotted.split(".")
    node: Any = doc
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


NET = "facts.after.network"
HOSTILE = [
    # (where the value goes, the value, the field the refusal names)
    ("run_id", "pv-1`\n## VETO", "run_id"),
    ("run_id", "", "run_id"),
    (f"{NET}.subnet", "not-a-subnet", f"{NET}.subnet"),
    (f"{NET}.subnet", 10, f"{NET}.subnet"),
    *[(f"{NET}.{k}", -5, f"{NET}.{k}") for k in ("capacity", "vips", "task_ips", "used")],
    (f"{NET}.lb_endpoints", True, f"{NET}.lb_endpoints"),
    (f"{NET}.containers", "abc", f"{NET}.containers"),
    (f"{NET}.used", 11.0, f"{NET}.used"),
    (f"{NET}.used", None, f"{NET}.used"),
    (f"{NET}.per_service", {"ghost": -5}, f"{NET}.per_service.ghost"),
    (f"{NET}.per_service", {"x\n## M1 — forged: **PASS** @2026": 1}, f"{NET}.per_service["),
    ("facts.after.services.0.name", "app\n<!-- pvcheck:end -->", "facts.after.services.0.name"),
    ("facts.after.services.1.running", None, "facts.after.services.1.running"),
    ("facts.after.services.1.desired", "1", "facts.after.services.1.desired"),
    ("deploy.stacks", ["app\n<!-- pvcheck:end review.x -->"], "deploy.stacks.0"),
    *[(f"allocator.{k}", -1, f"allocator.{k}") for k in FIGURES],
    ("allocator.peak", False, "allocator.peak"),
    ("run_logs.since", 'a"{} BEGIN{system("id > /tmp/pwn")} $2>="a', "run_logs.since"),
    ("run_logs.until", "yesterday", "run_logs.until"),
    ("run_logs.until", "2026-02-30T00:00:00Z", "run_logs.until"),
    ("run_logs.until", None, "run_logs.until"),
    ("run_logs.probe_ids", ["x; rm -rf /"], "run_logs.probe_ids.0"),
    ("run_logs.probe_ids", ["a"] * (MAX_PROBE_IDS + 1), "run_logs.probe_ids"),
    ("run_logs.probe_ids", [5], "run_logs.probe_ids.0"),
    ("run_logs.probe_ids", "abc", "run_logs.probe_ids"),
]


@pytest.mark.faults
@pytest.mark.parametrize(("where", "value", "named"), HOSTILE)
def test_a_value_pvcheck_never_writes_is_refused_naming_its_field(
    where: str, value: Any, named: str
) -> None:
    doc = _with(written(full_report()), where, value)
    with pytest.raises(StateFileError) as refused:
        recorded_from_json(doc, "REPORT-pvcheck.json")
    message = str(refused.value)
    assert message.startswith(f"REPORT-pvcheck.json: field {named}"), message
    assert message.endswith("; not a report pvcheck wrote")
    assert "\n" not in message  # a hostile value is quoted, never written as it is


def test_a_hostile_key_is_quoted_in_the_field_path() -> None:
    assert field_path(("facts", "after", "network", "per_service", "ok_1", "[key]")) == (
        "facts.after.network.per_service.ok_1[key]"
    )
    assert field_path(("deploy", "stacks", 0)) == "deploy.stacks.0"
    assert field_path(()) == "(the report itself)"
    assert field_path(("per_service", "x\n## M1", "[key]")) == "per_service['x\\n## M1'][key]"


def test_a_host_value_the_model_refuses_never_costs_the_run_its_evidence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer names the field the review would refuse (a warning), still writes every
    state file, and the review then refuses the report naming that field."""
    from pvcheck.evidence import write_evidence
    from pvcheck.review import read_recorded

    report = sample_report(False)
    report.deploy_stacks = ["bad stack\n## DONE"]
    with pytest.raises(PvcheckError, match=r"field deploy\.stacks\.0 is one pvcheck's review"):
        report.document()
    assert json.loads(report.to_json())["deploy"]["stacks"] == ["bad stack\n## DONE"]
    assert "deploy.stacks.0" in caplog.text and "written unchecked" in caplog.text
    cfg = load_config(LAB_CONFIG, {"docs": {"dir": str(tmp_path)}})
    write_evidence(report, cfg)
    paths = cfg.docs.paths
    assert all(p.exists() for p in (paths.history, paths.report, paths.status))
    assert "\n## DONE" not in paths.status.read_text()
    with pytest.raises(StateFileError, match=r"deploy\.stacks\.0"):
        read_recorded(paths.report)


def test_the_writer_refuses_a_key_the_model_does_not_know_rather_than_drop_it() -> None:
    parts: dict[str, Any] = written(sample_report(False))
    parts["facts"]["after"]["network"]["added_later"] = 1
    with pytest.raises(ValidationError) as refused:
        ReportDocument.written(parts)
    assert refusal(refused.value) == (
        "facts.after.network",
        "not in the report's model: added_later",
    )
    # Read back, the same key is ignored (a report of a later version).
    assert ReportDocument.model_validate(parts).facts.after is not None
    with pytest.raises(ValidationError, match="not in the report's model: gatez"):
        ReportDocument.written({"run_id": "r", "gatez": {}})


# --- the published schema ---------------------------------------------------------------------


def test_the_command_prints_the_models_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from pvcheck.app.cli import main

    assert main(["report-schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == report_schema() == ReportDocument.model_json_schema()
    assert printed["required"] == ["run_id"]  # every other key has a default (older versions)


def test_a_written_report_validates_against_the_schema() -> None:
    for report in (full_report(), sample_report(False), Report("pv-1", "t", "c.toml", "x")):
        doc = written(report)
        assert ReportDocument.model_validate(doc).model_dump(mode="json") == doc
        try:
            jsonschema = importlib.import_module("jsonschema")
        except ImportError:  # the model's own validation above is the check
            continue
        jsonschema.Draft202012Validator.check_schema(report_schema())
        jsonschema.validate(doc, report_schema())


def test_the_golden_report_is_a_file_pvcheck_reads() -> None:
    if os.environ.get("PVCHECK_UPDATE_GOLDEN"):
        pytest.skip("regenerating")
    got = read_recorded(GOLDEN / "report-full.json")
    assert got is not None and got.run_id == full_report().run_id
