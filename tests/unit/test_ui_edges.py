"""What the Prefect UI shows an operator at its edges (issue 28, item 4): a run that meets
another on its host, task run names, what a task logs at INFO, tables that fit the page, the
trend chart's axes, one spelling for a missing figure, and the deployments' descriptions and
schedules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import prefect.flow_engine as engine
import pytest
from prefect import State
from prefect.logging import disable_run_logger
from prefect.logging.loggers import PrefectLogAdapter, flow_run_logger
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.states import Cancelled

from pvcheck import masking
from pvcheck.config import load_config
from pvcheck.errors import HostBusy
from pvcheck.flows.verify import RunParameters, verify
from pvcheck.pinned import pin
from pvcheck.runs import Holder, HostLock
from tests.helpers import held_in_another_process, write_config

HOLDER_RUN = "pv-20260101000000-abcdef"
HOLDER_URL = "http://127.0.0.1:4200/flow-runs/flow-run/5b1c3e0e-0000-4000-8000-000000000001"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def flow_run_records() -> Iterator[list[logging.LogRecord]]:
    """Every record the flow run logger passes on (its own filters applied)."""
    logger = logging.getLogger("prefect.flow_runs")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _held(tmp_path: Path, docker_host: str) -> Any:
    """The host lock held by another run (another process), recorded as that run."""
    return held_in_another_process(
        "from pvcheck.runs import HostLock, Holder",
        f"HostLock(Path(sys.argv[1]), {docker_host!r}, "
        f"Holder(run_id={HOLDER_RUN!r}, flow_run_url={HOLDER_URL!r}))",
        tmp_path / "state",
    )


# --- a run that meets another on its host ----------------------------------------------------
@pytest.mark.faults
def test_the_busy_message_names_the_holding_run_and_its_flow_run(tmp_path: Path) -> None:
    host = "ssh://root@cc-ci:22"
    with _held(tmp_path, host), pytest.raises(HostBusy) as busy, HostLock(tmp_path / "state", host):
        pass
    said = str(busy.value)
    assert said.startswith(f"another pvcheck run holds this host: run {HOLDER_RUN}")
    assert f"(flow run {HOLDER_URL})" in said and "pid " in said and "since 20" in said
    assert "\n" not in said


def test_an_old_or_torn_lock_record_is_shown_as_one_line() -> None:
    assert Holder.parse("pid 25773 on vm\n") is None
    assert Holder.parse('{"run_id": 1}') is None
    assert Holder.parse('{"run_id": "pv-1", "pid": 7, "host": "vm"}') == Holder(
        run_id="pv-1", pid=7, host="vm"
    )
    assert Holder(run_id="pv-1", flow_run_id="abc", pid=7, host="vm").describe() == (
        "run pv-1 (flow run abc), pid 7 on vm"
    )


@pytest.mark.faults
def test_a_verify_run_meeting_another_ends_cancelled_without_an_engine_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flow_run_records: list[logging.LogRecord]
) -> None:
    """The flow's own function, then Prefect's run_flow wrapper as a worker's engine runs it
    (with the flow run's logger as its error logger): the state stays Cancelled and names the
    holder, and the engine's ERROR record about that state is not written."""
    config = write_config(tmp_path)
    monkeypatch.setenv("PVCHECK_PINNED_CONFIGS", "{}")
    pin([str(config)])
    cfg = load_config(config)
    with _held(tmp_path, cfg.target.docker_host), disable_run_logger():
        state = verify.fn(**RunParameters.form(cfg))
    assert state.is_cancelled() and HOLDER_RUN in str(state.message)
    assert HOLDER_URL in str(state.message)

    # What flow_engine.run_flow does with that state when a worker runs the flow.
    monkeypatch.setattr(engine, "run_flow_sync", lambda **_: state.result())
    # The engine passes the flow run's logger adapter where a Logger is annotated.
    error_logger = cast(logging.Logger, PrefectLogAdapter(logging.getLogger("prefect.flow_runs")))

    def quiet() -> Any:
        return temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"})

    with quiet(), pytest.raises(Exception, match="another pvcheck run holds this host"):
        engine.run_flow(verify, parameters={"target": "lab"}, error_logger=error_logger)
    assert [r for r in flow_run_records if r.levelno >= logging.ERROR] == []
    # With a secret masked (a Drone token), records carry the exception as text: the same.
    monkeypatch.setattr(masking, "_secrets", frozenset({"s3cr3t-token"}))
    masking._install_log_masking()
    with quiet(), pytest.raises(Exception, match="another pvcheck run holds this host"):
        engine.run_flow(verify, parameters={"target": "lab"}, error_logger=error_logger)
    assert [r for r in flow_run_records if r.levelno >= logging.ERROR] == []

    # Any other cancelled run still gets Prefect's record.
    monkeypatch.setattr(engine, "run_flow_sync", lambda **_: Cancelled(message="other").result())
    with quiet(), pytest.raises(Exception, match="other"):
        engine.run_flow(verify, parameters={"target": "lab"}, error_logger=error_logger)
    assert [r.getMessage() for r in flow_run_records if r.levelno >= logging.ERROR] == [
        "Engine execution exited with unexpected exception"
    ]


@pytest.mark.slow
def test_a_run_meeting_another_under_a_real_prefect_api_ends_cancelled_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flow_run_records: list[logging.LogRecord]
) -> None:
    """The same with a real (temporary) Prefect API and the real engine: the flow run ends
    Cancelled naming the holder, and its log has no ERROR line."""
    from prefect.testing.utilities import prefect_test_harness

    config = write_config(tmp_path)
    monkeypatch.setenv("PVCHECK_PINNED_CONFIGS", "{}")
    pin([str(config)])
    cfg = load_config(config)
    form = RunParameters.form(cfg)
    with prefect_test_harness(server_startup_timeout=240), _held(tmp_path, cfg.target.docker_host):
        state = engine.run_flow(verify, parameters=form, return_type="state")
        assert isinstance(state, State)
        assert state.is_cancelled() and HOLDER_RUN in str(state.message)
        with pytest.raises(Exception, match="another pvcheck run holds this host"):
            engine.run_flow(
                verify,
                parameters=form,
                error_logger=cast(
                    logging.Logger,
                    flow_run_logger(flow=verify, flow_run_id=state.state_details.flow_run_id),
                ),
            )
    assert [r.getMessage() for r in flow_run_records if r.levelno >= logging.ERROR] == []


# --- task run names carry their role ---------------------------------------------------------
def _run_name(task: Any, *args: Any, **kwargs: Any) -> str:
    """The name Prefect gives a run of `task` called with these arguments."""
    from prefect._internal.engine import resolve_custom_task_run_name
    from prefect.utilities.callables import get_call_parameters

    return resolve_custom_task_run_name(task, get_call_parameters(task.fn, args, kwargs))


def test_task_runs_of_one_task_are_named_by_their_role() -> None:
    from datetime import UTC, datetime

    from pvcheck import facts, logscan, routes
    from pvcheck.config import LAB_CONFIG
    from pvcheck.records import Family, Gate
    from pvcheck.tasks.facts import capture_facts
    from pvcheck.tasks.logs import scan_docker_log
    from pvcheck.tasks.review import run_cold_commands
    from pvcheck.tasks.routes import recheck_core_routes

    cfg, now = load_config(LAB_CONFIG), datetime.now(UTC)
    seams: Any = None
    settings = facts.Settings.from_config(cfg)
    assert _run_name(capture_facts, seams, settings) == "capture-facts-before"
    assert _run_name(capture_facts, seams, settings, facts.AFTER) == "capture-facts-after"
    assert _run_name(capture_facts, seams, settings, "review") == "capture-facts-review"
    names = {
        _run_name(
            scan_docker_log, seams, logscan.Settings.window(cfg, Family.LOGS.id(w), w, now, now)
        )
        for w in ("window", "fresh-allocator", "fresh-run", "after-builder")
    }
    assert names == {
        "scan-docker-log-window",
        "scan-docker-log-fresh-allocator",
        "scan-docker-log-fresh-run",
        "scan-docker-log-after-builder",
    }
    route_settings = routes.Settings.from_config(cfg)
    assert _run_name(recheck_core_routes, seams, route_settings, "deploy") == (
        "recheck-core-routes-before-deploy"
    )
    assert _run_name(recheck_core_routes, seams, route_settings, "allocator") == (
        "recheck-core-routes-before-allocator"
    )
    assert _run_name(run_cold_commands, [], Gate.M2) == "cold-commands-m2"


# --- raw dockerd lines at DEBUG, one summary line at INFO -------------------------------------
KEY_MODIFIED = (
    'time="{t}" level=warning msg="Error (Unable to complete atomic operation, key modified) '
    'deleting object [endpoint 5f0c 7d1e], retrying...."'
)


def test_the_log_scan_says_its_counts_in_one_info_line_and_keeps_raw_lines_at_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    import pvcheck.tasks.logs as task_module
    from pvcheck import logscan
    from pvcheck.config import LAB_CONFIG
    from pvcheck.records import Family

    cfg, now = load_config(LAB_CONFIG), datetime.now(UTC)
    stamp = (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
    lines = [KEY_MODIFIED.format(t=stamp)] * 214 + ['time="x" level=info msg="unrelated"']
    source = SimpleNamespace(describe=lambda: "file /var/log/docker.log", lines=lambda *_: lines)
    logger, handler = logging.getLogger("test.scan"), Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    monkeypatch.setattr(task_module, "get_run_logger", lambda: logger)
    settings = logscan.Settings.window(
        cfg, Family.LOGS.id("fresh-run"), "this run", now - timedelta(hours=1), now
    )
    task_module.scan_docker_log.fn(SimpleNamespace(logs=source), settings)  # type: ignore[arg-type]
    info = [r.getMessage() for r in handler.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in handler.records if r.levelno == logging.DEBUG]
    assert not any("level=warning" in m for m in info), info
    summary = [m for m in info if m.startswith("docker log during this run")]
    assert len(summary) == 1
    assert "0 VIP-exhaustion line(s)" in summary[0]
    assert "214 GC-race line(s) (0 network-remove-failed, 214 key-modified)" in summary[0]
    assert "key_modified" not in summary[0] and "\n" not in summary[0]
    assert debug and all("level=warning" in m for m in debug)


# --- tables that fit a 1280 px page ----------------------------------------------------------
# What a table may take at 1280 px: the page less the UI's side bar and margins, at about
# 7.5 px a character (14 px sans) and 24 px of cell padding.
PAGE_PX, CHAR_PX, CELL_PX = 1000, 7.5, 24


def table_px(rows: list[dict[str, Any]]) -> float:
    return sum(
        max(len(str(key)), *(len(str(r[key])) for r in rows)) * CHAR_PX + CELL_PX for key in rows[0]
    )


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
            tables.append([])
        elif not set(line) <= set("|-"):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


def _report_with_rounds(rounds: int = 5) -> Any:
    from dataclasses import replace

    from pvcheck.allocator import RoundFigures
    from tests.unit.test_render import sample_report

    report = sample_report(False)
    assert report.allocator is not None
    counts = {"vips": 1205, "task_ips": 1210, "lb_endpoints": 1, "containers": 0}
    peak = {"vips": 1230, "task_ips": 1260, "lb_endpoints": 1, "containers": 0}
    left = [f"pvc-pv-20261126120000-abc123-{i}_default" for i in range(4)]
    report.allocator = replace(
        report.allocator,
        rounds=[
            RoundFigures(n, 20, counts, peak, counts, True, False, 123.4, 214, -3, left, left)
            for n in range(1, rounds + 1)
        ],
    )
    return report


def test_the_allocator_tables_fit_a_1280_px_page() -> None:
    from pvcheck.evidence import render
    from pvcheck.tasks.evidence import allocator_detail_rows, allocator_rows

    report = _report_with_rounds()
    for rows in (allocator_rows(report), allocator_detail_rows(report)):
        assert len(rows[0]) <= 7 and table_px(rows) <= PAGE_PX, rows[0]
    text = render("allocator.md.j2", report=report, alloc=report.allocator)
    tables = markdown_tables(text)
    assert len(tables) == 2 and all(len(t) == 5 for t in tables)
    for table in tables:
        assert len(table[0]) <= 7 and table_px(table) <= PAGE_PX, table[0]


def test_the_history_and_fleet_tables_fit_a_1280_px_page() -> None:
    from pvcheck.tasks.evidence import fleet_rows, history_rows

    record = {
        "at": "2026-11-26T12:00:09Z",
        "run_id": "pv-20261126120000-abc123",
        "verdict": "incomplete",
        "endpoints": 65530,
        "headroom_pct": 0.004,
        "leaked": 214,
        "seconds": 1234.5,
    }
    assert table_px(history_rows([record] * 10)) <= PAGE_PX
    fleet = fleet_rows({"cc-ci-production-host": [record] * 10, "lab": []})
    assert table_px(fleet) <= PAGE_PX


# --- one spelling for "no figure" ------------------------------------------------------------
def test_a_missing_figure_reads_the_same_in_every_table() -> None:
    from pvcheck.evidence import render
    from pvcheck.records import NO_FIGURE
    from pvcheck.tasks.evidence import fleet_rows, history_rows

    failed: dict[str, Any] = {"at": "2026-11-26T12:00:09Z", "run_id": "pv-1", "verdict": "fail"}
    failed |= dict.fromkeys(("endpoints", "headroom_pct", "leaked", "seconds"))
    history = history_rows([failed])[0]
    assert [history[k] for k in ("endpoints", "headroom %", "leaked", "s")] == [NO_FIGURE] * 4
    fleet = fleet_rows({"lab": [failed]})[0]
    assert fleet["leaked, last runs"] == NO_FIGURE and fleet["leak trend"] == NO_FIGURE
    assert fleet["endpoints"] == NO_FIGURE and fleet["headroom %"] == NO_FIGURE
    trend = markdown_tables(render("status_trend.md.j2", records=[failed], svg_src="x"))[0][0]
    assert [trend[k] for k in ("endpoints", "headroom", "leaked", "seconds")] == [NO_FIGURE] * 4
    for cells in (history, fleet, trend):
        assert all(v not in (None, "", "None", "—", "-") for v in cells.values()), cells


def test_no_template_spells_a_missing_figure_by_hand() -> None:
    from pvcheck.resources import TEMPLATES

    for path in Path(TEMPLATES).glob("*.j2"):
        text = path.read_text().replace("(n/a){% endif %}", "")  # a not-applicable check
        assert '"n/a"' not in text and ">n/a<" not in text and "%}n/a{%" not in text, path


# --- the trend chart's axes ------------------------------------------------------------------
def test_the_trend_chart_titles_both_axes_with_units_and_has_a_legend() -> None:
    import xml.etree.ElementTree as ET

    from pvcheck.history import trend_svg

    records = [
        {"run_id": str(i), "endpoints": 29, "engine_leaked": i % 2, "at": f"2026-11-2{i}T00:17:00Z"}
        for i in range(4)
    ]
    records[2]["engine_leaked"] = None  # a FAIL run: no figure, no point at 0
    root = ET.fromstring(trend_svg(records))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert "endpoints in use (count)" in texts and "leaked addresses (count)" in texts
    assert any(t.startswith("run finished (UTC") for t in texts)
    assert any("endpoints in use" in t and "(count)" not in t for t in texts)  # the legend
    red = [c for c in root.iter(f"{ns}circle") if c.get("fill") == "#c0392b"]
    assert len(red) == 3


# --- the deployments: what a collision does, and the nightly's time zone ---------------------
def test_every_deployment_says_what_a_collision_does_and_the_nightly_shows_its_zone() -> None:
    from pvcheck.config import LAB_CONFIG
    from pvcheck.flows.serving import build_deployments, schedule_label

    cfg = load_config(LAB_CONFIG)
    built = build_deployments({cfg.target.name: cfg}, "17 0 * * *", "Europe/Berlin")
    for dep in built:
        text = str(dep.description)
        assert "Deployment concurrency limit reached." in text, dep.name
        assert "start it again once that one has finished" in text
        assert "naming the run that holds it" in text
    nightly = next(d for d in built if d.name == "nightly")
    # The deployment page shows a schedule by its slug when it has one.
    assert [s.slug for s in nightly.schedules or []] == ["every day at 00:17 Europe/Berlin"]
    assert schedule_label("*/15 1 * * 1-5", "UTC") == "cron */15 1 * * 1-5 (UTC)"


def test_a_changed_nightly_schedule_does_not_leave_the_old_one_behind() -> None:
    from types import SimpleNamespace
    from uuid import uuid4

    from prefect.exceptions import ObjectNotFound

    from pvcheck.config import LAB_CONFIG
    from pvcheck.flows.serving import build_deployments, drop_stale_schedules

    cfg = load_config(LAB_CONFIG)
    built = build_deployments({cfg.target.name: cfg}, "30 2 * * *", "UTC")
    old = SimpleNamespace(id=uuid4(), slug="every day at 00:17 UTC")
    kept = SimpleNamespace(id=uuid4(), slug="every day at 02:30 UTC")
    unslugged = SimpleNamespace(id=uuid4(), slug=None)
    deleted: list[Any] = []

    class Client:
        def read_deployment_by_name(self, name: str) -> Any:
            if name != "pvcheck-verify/nightly":
                raise ObjectNotFound(http_exc=Exception(name))
            return SimpleNamespace(id="dep", schedules=[old, kept, unslugged])

        def delete_deployment_schedule(self, deployment_id: str, schedule_id: Any) -> None:
            deleted.append((deployment_id, schedule_id))

    dropped = drop_stale_schedules(built, Client())
    assert deleted == [("dep", old.id), ("dep", unslugged.id)]
    assert dropped[0] == "pvcheck-verify/nightly: every day at 00:17 UTC"


def test_runs_the_concurrency_limit_cancelled_are_told_why_in_their_own_log() -> None:
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace
    from uuid import uuid4

    from pvcheck.busy import LIMIT_MESSAGE, explain_limit_cancellations

    since = datetime.now(UTC) - timedelta(minutes=30)
    me = Holder(run_id=HOLDER_RUN, flow_run_id=str(uuid4()), flow_run_url=HOLDER_URL)

    def run(name: str, message: str, created: datetime, ident: Any = None) -> Any:
        return SimpleNamespace(
            id=ident or uuid4(), name=name, created=created, state=SimpleNamespace(message=message)
        )

    runs = [
        run("cheerful-otter", LIMIT_MESSAGE, since + timedelta(minutes=5)),
        run("from-the-ui", "Cancelled by the user.", since + timedelta(minutes=6)),
        run("yesterday", LIMIT_MESSAGE, since - timedelta(days=1)),
        run("me", LIMIT_MESSAGE, since + timedelta(minutes=1), me.flow_run_id),
    ]
    written: list[Any] = []
    client = SimpleNamespace(
        read_flow_runs=lambda **_: runs, create_logs=lambda logs: written.extend(logs)
    )
    assert explain_limit_cancellations(me, str(uuid4()), since, client) == ["cheerful-otter"]
    assert [w.flow_run_id for w in written] == [runs[0].id]
    note = written[0].message
    assert HOLDER_RUN in note and HOLDER_URL in note and "one at a time" in note
    assert written[0].level == logging.WARNING


# --- the form's titles in the schema and in pvcheck's own messages ---------------------------
def test_every_form_field_has_its_title_and_pvcheck_names_fields_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.utilities.callables import parameter_schema

    from pvcheck.errors import ConfigError
    from pvcheck.flows.janitor import janitor
    from pvcheck.flows.params import TITLES, served_config
    from pvcheck.flows.review import review

    for flow in (verify, review, janitor):
        props = parameter_schema(flow).model_dump()["properties"]
        assert {k: p["title"] for k, p in props.items()} == {k: TITLES[k] for k in props}
    monkeypatch.setenv("PVCHECK_PINNED_CONFIGS", "{}")
    config = write_config(tmp_path, lambda raw: raw.pop("lab", None))
    pin([str(config)])
    with pytest.raises(ConfigError, match=r"^the run form: Host: 'elsewhere' is not one of"):
        served_config("elsewhere")
    cfg = load_config(config)
    with pytest.raises(ConfigError, match=r"^the run form: Canary \(lab only\): the canary runs"):
        verify.fn(**RunParameters.form(cfg) | {"canary": True})
