"""History records, the SVG trend chart, and the shipped Prefect automations file."""

from __future__ import annotations

import string
import uuid
from pathlib import Path
from xml.etree import ElementTree as ET

import yaml

from pvcheck.history import read_history, trend_svg
from pvcheck.statefiles import append_history
from tests.helpers import ROOT


def test_history_appends_and_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "HISTORY.jsonl"
    archive = tmp_path / "HISTORY.archive.jsonl"
    append_history(
        path, {"run_id": "a", "endpoints": 11, "leaked": 0, "at": "2026-11-26T01:00:00Z"}, archive
    )
    with open(path, "a") as fh:
        fh.write('{"torn": \n')
    append_history(
        path, {"run_id": "b", "endpoints": 13, "leaked": 2, "at": "2026-11-27T01:00:00Z"}, archive
    )
    assert [r["run_id"] for r in read_history(path)] == ["a", "b"]
    assert read_history(tmp_path / "none.jsonl") == []


def test_trend_svg_is_valid_and_plots_every_run() -> None:
    records = [
        {"run_id": str(i), "endpoints": 11 + i, "leaked": i % 2, "at": f"2026-11-2{i}T01:00:00Z"}
        for i in range(3)
    ]
    svg = trend_svg(records)
    root = ET.fromstring(svg)
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 6  # 3 runs x 2 series
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert ET.fromstring(trend_svg([])) is not None  # no runs yet: still a valid picture


def test_shipped_automations_are_valid_prefect_automations() -> None:
    from prefect.events.schemas.automations import AutomationCore

    text = (ROOT / "deployments" / "automations.yaml").read_text()
    filled = string.Template(text).safe_substitute(
        NOTIFY_BLOCK_ID=uuid.uuid4(), JANITOR_DEPLOYMENT_ID=uuid.uuid4()
    )
    autos = [AutomationCore.model_validate(a) for a in yaml.safe_load(filled)["automations"]]
    kinds = {a.name: [type(x).__name__ for x in a.actions] for a in autos}
    assert kinds == {
        "pvcheck nightly run failed, crashed or incomplete": ["SendNotification"],
        "pvcheck janitor after a crashed run": ["RunDeployment"],
    }
    # The event is named after the state: the INCOMPLETE verdict's state is "Incomplete".
    expected = autos[0].trigger.expect  # type: ignore[union-attr]
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Incomplete"} <= set(expected)


def test_the_default_nightly_schedule_misses_cc_cis_sweeps() -> None:
    """Against the record's sweep timers (the orchestrator's Sun 02:00 UTC, the host's Sun
    03:00) with the shipped one-hour lead, over three weeks: no nightly run meets one. The
    old default, 01:17, met the /upgrade-all every Sunday: the test can fail."""
    from datetime import UTC, datetime, timedelta

    from pvcheck.app.cli import build_parser
    from pvcheck.flows.serving import NIGHTLY_CRON, nightly_times
    from pvcheck.timers import SweepWindow, nightly_clashes

    serve = build_parser().parse_args(["serve", "--config", "x.toml"])
    assert serve.cron == NIGHTLY_CRON  # the CLI's default is the same schedule
    now = datetime(2026, 11, 28, tzinfo=UTC)  # a Saturday
    sundays = [now + timedelta(days=1 + 7 * week) for week in range(3)]
    windows = [
        SweepWindow("cc-ci-upgrade-all.timer", "on this machine", ("Sun *-*-* 02:00:00 UTC",),
                    tuple(d.replace(hour=2) for d in sundays)),
        SweepWindow("nightly-sweep.timer", "on the target host", ("Sun *-*-* 03:00:00",),
                    tuple(d.replace(hour=3) for d in sundays)),
    ]  # fmt: skip
    nightly = nightly_times(NIGHTLY_CRON, "UTC", now, 21)
    assert len(nightly) == 21
    assert nightly_clashes(nightly, windows, 3600, 0) == []
    old = nightly_clashes(nightly_times("17 1 * * *", "UTC", now, 21), windows, 3600, 0)
    assert old == [
        f"the nightly run at {d:%Y-%m-%d} 01:17 UTC meets cc-ci-upgrade-all.timer on this "
        f"machine (fires {d:%Y-%m-%d} 02:00 UTC)"
        for d in sundays
    ]
