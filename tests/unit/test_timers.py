"""Sweeps from their systemd timers (pvcheck.timers). systemd does not run on the test
machine, so `systemctl show` is fed text: the unit files in the record's directive forms,
systemctl's output in the shapes systemd's source prints (modelled, and said so in the
fixtures), and systemd-analyze's real output captured here. A machine without systemd is
tested for real when the test machine is one."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pvcheck.config import ActiveRunsConfig
from pvcheck.deploy.active import active_runs
from pvcheck.liveness import Here
from pvcheck.timers import (
    SHOW_SERVICE,
    SHOW_TIMER,
    CalendarTimer,
    Sweep,
    SweepRead,
    on_calendar,
    parse_analyze_calendar,
    parse_calendars,
    parse_show,
    parse_timestamp,
    persistent,
    read_sweeps,
    service_running,
    show_argv,
    sweep_activity,
)
from tests.fakes import FakeSwarm
from tests.helpers import ROOT

RECORD = ROOT / "tests" / "golden" / "record"
UNITS = ["cc-ci-upgrade-all.timer", "nightly-sweep.timer", "weekly-gone.timer"]
SERVICES = ["cc-ci-upgrade-all.service", "nightly-sweep.service", "weekly-gone.service"]


def _fixture(name: str) -> str:
    """A fixture without its citation header (# lines)."""
    lines = (RECORD / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#")).lstrip("\n")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Systemctl:
    """A machine's systemctl and systemd-analyze, answering from recorded text."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = answers
        self.ran: list[list[str]] = []

    def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
        self.ran.append(argv)
        return self.answers.get(tuple(argv), (1, "", f"unexpected {argv}"))


def _machine() -> Systemctl:
    timers = _fixture("timer-systemctl-show-timers.txt")
    services = _fixture("timer-systemctl-show-services.txt")
    return Systemctl(
        {
            tuple(show_argv(UNITS, SHOW_TIMER)): (0, timers, ""),
            tuple(show_argv(SERVICES, SHOW_SERVICE)): (0, services, ""),
        }
    )


def test_on_calendar_reads_the_record_timers_unit_text() -> None:
    upgrade_all = (RECORD / "timer-cc-ci-upgrade-all.timer").read_text()
    assert on_calendar(upgrade_all) == ["Sun *-*-* 02:00:00 UTC"]
    assert persistent(upgrade_all) is True
    nightly = (RECORD / "timer-nightly-sweep.timer").read_text()
    # `systemctl cat` with a drop-in: the empty OnCalendar= clears the file's daily schedule.
    assert on_calendar(nightly) == ["Sun *-*-* 03:00:00"]
    assert persistent(nightly) is False


def test_unit_text_edge_cases() -> None:
    text = (
        "[Unit]\nOnCalendar=not-a-timer-section\n"
        "[Timer]\n; a comment\nOnCalendar=Mon *-*-*\\\n  04:00:00\n"
        "OnCalendar = daily\nPersistent=true\nPersistent=no\n"
    )
    assert on_calendar(text) == ["Mon *-*-* 04:00:00", "daily"]
    assert persistent(text) is False  # the last assignment counts
    assert on_calendar("") == []


def test_systemctl_show_values() -> None:
    blocks = parse_show(_fixture("timer-systemctl-show-timers.txt"))
    assert [b["Id"] for b in blocks] == [[u] for u in UNITS]
    assert parse_calendars(blocks[0]["TimersCalendar"]) == [
        CalendarTimer("OnCalendar", "Sun *-*-* 02:00:00 UTC", _utc("2026-06-14 02:00:00"))
    ]
    assert parse_timestamp("Sun 2026-06-14 02:00:00 UTC") == _utc("2026-06-14 02:00:00")
    assert parse_timestamp("Sun 2026-06-14 02:00:00.123456 UTC") == _utc("2026-06-14 02:00:00")
    assert parse_timestamp("@1781402400") == _utc("2026-06-14 02:00:00")
    for unset in ("", "n/a", "0", "(null)", "Sun 2026-06-14 04:00:00 CEST"):
        assert parse_timestamp(unset) is None  # unset, or a zone pvcheck does not guess


def test_systemd_analyze_calendar_real_output() -> None:
    found = parse_analyze_calendar((RECORD / "timer-systemd-analyze-calendar.txt").read_text())
    assert [(c.normalized, c.next_elapse) for c in found] == [
        ("Sun *-*-* 02:00:00 UTC", _utc("2026-12-06 02:00:00")),
        ("Sun *-*-* 03:00:00", _utc("2026-12-06 03:00:00")),
        ("Mon *-*-* 00:00:00", _utc("2026-12-07 00:00:00")),
        ("2020-01-01 00:00:00", None),  # never again
    ]
    # Outside UTC systemd adds the UTC line, which wins.
    local = (
        "Normalized form: Sun *-*-* 02:00:00 UTC\n    Next elapse: Sun 2026-12-06 03:00:00 CET\n"
        "       (in UTC): Sun 2026-12-06 02:00:00 UTC\n"
    )
    assert parse_analyze_calendar(local)[0].next_elapse == _utc("2026-12-06 02:00:00")


@pytest.mark.parametrize(
    ("active", "sub", "running"),
    [
        ("activating", "start", True),  # a oneshot sweep at work
        ("active", "running", True),  # a simple service
        ("deactivating", "stop-sigterm", True),  # still has processes
        ("active", "exited", False),  # RemainAfterExit, done
        ("inactive", "dead", False),
        ("failed", "failed", False),
    ],
)
def test_service_running(active: str, sub: str, running: bool) -> None:
    assert service_running(active, sub) is running


def test_read_sweeps_from_the_machine_that_owns_the_timers() -> None:
    machine = _machine()
    read = read_sweeps(machine, UNITS)
    upgrade_all, nightly, gone = read.sweeps
    assert upgrade_all == Sweep(
        "cc-ci-upgrade-all.timer", "loaded", "cc-ci-upgrade-all.service", "inactive/dead", False,
        next_elapse=_utc("2026-06-14 02:00:00"), last_trigger=_utc("2026-06-07 02:00:04"),
        persistent=True, schedule=("Sun *-*-* 02:00:00 UTC",),
    )  # fmt: skip
    assert nightly.running and nightly.service_state == "activating/start"
    assert nightly.next_elapse is None  # while it runs, the passed elapse is not used
    assert gone.load_state == "not-found" and not gone.running
    # Timestamps in UTC whatever the machine's zone; unit names after `--`.
    assert machine.ran[0][:3] == ["env", "TZ=UTC", "LC_ALL=C"]
    assert machine.ran[0][-4:] == ["--", *UNITS]


def test_sweep_activity_running_due_just_fired_and_unknown() -> None:
    read = read_sweeps(_machine(), UNITS)
    now = _utc("2026-06-14 01:30:00")
    found = sweep_activity(read, now, where="on the target host")
    assert found == [
        "sweep nightly-sweep.service running on the target host (activating/start, "
        "started by nightly-sweep.timer)",
        "sweep unit weekly-gone.timer on the target host is not-found: pvcheck cannot tell "
        "whether it runs",
    ]
    # Due within the lead: the Sunday 02:00 UTC sweep is 30 min away.
    due = sweep_activity(SweepRead(read.sweeps[:1]), now, lead_s=3600)
    assert due == ["sweep cc-ci-upgrade-all.timer fires at 2026-06-14 02:00 UTC, within 3600s"]
    assert sweep_activity(SweepRead(read.sweeps[:1]), now, lead_s=600) == []
    # Overdue (Persistent=true catching up) counts as due.
    late = now + timedelta(hours=2)
    assert sweep_activity(SweepRead(read.sweeps[:1]), late, lead_s=1)[0].startswith(
        "sweep cc-ci-upgrade-all.timer fires at"
    )
    # A launcher service that ended at once: the window after the last trigger counts.
    after = _utc("2026-06-07 02:30:00")
    assert sweep_activity(SweepRead(read.sweeps[:1]), after, window_s=3600) == [
        "sweep cc-ci-upgrade-all.timer fired at 2026-06-07 02:00 UTC, less than 3600s ago"
    ]
    assert sweep_activity(SweepRead(read.sweeps[:1]), after, window_s=600) == []


def test_a_machine_without_systemd_runs_no_sweep_but_an_unreadable_one_is_busy() -> None:
    # systemctl's words on this very test machine (systemd is not PID 1 here).
    refused = (
        "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
        "Failed to connect to bus: Host is down\n"
    )
    read = read_sweeps(Systemctl({tuple(show_argv(UNITS, SHOW_TIMER)): (1, "", refused)}), UNITS)
    assert read == SweepRead(no_systemd=True) and sweep_activity(read, datetime.now(UTC)) == []
    bus = "Failed to connect to bus: Permission denied\n"
    denied = Systemctl({tuple(show_argv(UNITS, SHOW_TIMER)): (1, "", bus)})
    read = read_sweeps(denied, UNITS)
    assert sweep_activity(read, datetime.now(UTC), where="on this machine") == [
        "sweep units on this machine cannot be read (Failed to connect to bus: Permission "
        "denied); a sweep may be active"
    ]


def test_a_timer_whose_next_elapse_cannot_be_read_asks_systemd_analyze() -> None:
    show = (
        "Id=cc-ci-upgrade-all.timer\nUnit=cc-ci-upgrade-all.service\nLoadState=loaded\n"
        "ActiveState=active\nSubState=waiting\nNextElapseUSecRealtime=Sun 2026-06-14 04:00:00 CEST\n"
        "TimersCalendar={ OnCalendar=Sun *-*-* 02:00:00 UTC ; next_elapse=Sun 2026-06-14 04:00:00 CEST }\n"
    )
    services = (
        "Id=cc-ci-upgrade-all.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n"
    )
    analyze = [
        "env",
        "TZ=UTC",
        "LC_ALL=C",
        "systemd-analyze",
        "calendar",
        "--",
        "Sun *-*-* 02:00:00 UTC",
    ]
    machine = Systemctl(
        {
            tuple(show_argv(UNITS[:1], SHOW_TIMER)): (0, show, ""),
            tuple(show_argv(SERVICES[:1], SHOW_SERVICE)): (0, services, ""),
            tuple(analyze): (0, _fixture("timer-systemd-analyze-calendar.txt"), ""),
        }
    )
    (sweep,) = read_sweeps(machine, UNITS[:1]).sweeps
    assert sweep.next_elapse == _utc("2026-12-06 02:00:00") and machine.ran[-1] == analyze


def test_sweep_units_in_the_active_runs_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = _machine()
    cfg = ActiveRunsConfig(sweep_units=UNITS[:2])
    machine.answers[tuple(show_argv(UNITS[:2], SHOW_TIMER))] = machine.answers[
        tuple(show_argv(UNITS, SHOW_TIMER))
    ]
    machine.answers[tuple(show_argv(SERVICES[:2], SHOW_SERVICE))] = machine.answers[
        tuple(show_argv(SERVICES, SHOW_SERVICE))
    ]
    found = active_runs(cfg, FakeSwarm(), host=machine)  # type: ignore[arg-type]
    assert found == [
        "sweep nightly-sweep.service running on the target host (activating/start, "
        "started by nightly-sweep.timer)"
    ]
    # Units on the machine pvcheck runs on go through Here, not the host seam.
    seen: list[list[str]] = []

    def here_run(self: Here, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
        seen.append(argv)
        return machine.run(argv, timeout_s)

    monkeypatch.setattr(Here, "run", here_run)
    cfg = ActiveRunsConfig(sweep_units_here=UNITS[:2], sweep_lead_s=3600)
    found = active_runs(cfg, FakeSwarm(), host=Systemctl({}))  # type: ignore[arg-type]
    assert any(f.startswith("sweep nightly-sweep.service running on this machine") for f in found)
    assert seen and all(argv[3] in ("systemctl", "systemd-analyze") for argv in seen)


@pytest.mark.skipif(
    shutil.which("systemctl") is None or Path("/run/systemd/system").exists(),
    reason="needs systemctl on a machine that does not run systemd (the twin's case)",
)
def test_the_twin_machine_has_no_systemd_so_no_sweep_runs_there() -> None:
    """The cc-ci twin runs here, where systemd is not PID 1: no timer can fire, so the
    shipped sweep units find nothing (and do not make every twin run INCOMPLETE)."""
    read = read_sweeps(Here(), ["nightly-sweep.timer"])
    assert read == SweepRead(no_systemd=True)


@pytest.mark.faults
@pytest.mark.parametrize("unit", ["-p.timer", "--all.service", "a b.timer", "x.socket", ""])
def test_sweep_unit_names_are_never_options_or_other_unit_types(unit: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ActiveRunsConfig(sweep_units=[unit])
    with pytest.raises(ValidationError):
        ActiveRunsConfig(sweep_units_here=[unit])
    assert ActiveRunsConfig(sweep_units=["nightly-sweep.timer"]).sweep_units == [
        "nightly-sweep.timer"
    ]


def test_host_text_never_becomes_an_option_and_a_bad_date_is_no_time() -> None:
    from pvcheck import timers

    assert timers.parse_timestamp("Thu 2026-13-40 02:00:00 UTC") is None

    seen: list[list[str]] = []

    class Records:
        def run(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
            seen.append(argv)
            return 1, "", ""

    timers._next_from_calendar(Records(), ["--root=/x", "--help", *["daily"] * 50])
    calendar = seen[0][seen[0].index("calendar") + 1 :]
    assert calendar[0] == "--" and len(calendar) == 1 + timers.MAX_SPECS


def test_systemd_analyze_iterations_give_a_week_of_elapses() -> None:
    from pvcheck.timers import sweep_elapses

    text = _fixture("timer-systemd-analyze-iterations.txt")
    upgrade_all, nightly = parse_analyze_calendar(text)
    assert upgrade_all.next_elapse == _utc("2026-12-06 02:00:00")
    assert upgrade_all.later == (_utc("2026-12-13 02:00:00"), _utc("2026-12-20 02:00:00"))
    assert nightly.later[-1] == _utc("2026-12-20 03:00:00")
    specs = ("Sun *-*-* 02:00:00 UTC", "Sun *-*-* 03:00:00")
    argv = ["env", "TZ=UTC", "LC_ALL=C", "systemd-analyze", "calendar", "--iterations=200",
            "--", *specs]  # fmt: skip
    machine = Systemctl({tuple(argv): (0, text, "")})
    week = sweep_elapses(machine, specs, _utc("2026-12-13 02:30:00"))
    assert week == [_utc("2026-12-06 02:00:00"), _utc("2026-12-06 03:00:00"),
                    _utc("2026-12-13 02:00:00")]  # fmt: skip


def test_the_schedule_check_reads_each_timer_where_it_lives() -> None:
    from pvcheck.timers import describe_windows, read_windows

    host = _machine()
    here = Systemctl({})  # this machine: no answer at all -> unreadable, never "clear"
    windows = read_windows(
        [(UNITS, host, "on the target host"), (["nightly-sweep.timer"], here, "on this machine")],
        _utc("2026-06-10 00:00:00"),
    )
    assert [w.unit for w in windows] == [*UNITS, "nightly-sweep.timer"]
    assert windows[0].schedule == ("Sun *-*-* 02:00:00 UTC",)
    # systemd-analyze gave no answer: unread, never "clear"
    assert windows[0].problem == "systemd-analyze could not compute it"
    assert windows[-1].problem is not None
    text = describe_windows(windows)
    assert "cc-ci-upgrade-all.timer on the target host (unread: systemd-analyze" in text
    assert "nightly-sweep.timer on this machine (unread: " in text


def test_the_shipped_host_units_count_a_running_prune_and_never_its_schedule() -> None:
    """deployments/cc-ci.toml names ci-docker-prune by its service: it counts while it runs,
    and its daily timer never makes a run wait (named as a timer, a one-hour lead would)."""
    from pvcheck.config import load_config

    runs = load_config(ROOT / "deployments" / "cc-ci.toml").deploy.active_runs  # type: ignore[union-attr]
    assert runs.sweep_units == ["nightly-sweep.timer", "ci-docker-prune.service"]
    assert runs.sweep_units_here == ["cc-ci-upgrade-all.timer", "cc-ci-upgrade-supervisor.service"]
    timers = _fixture("timer-systemctl-show-timers.txt")  # holds nightly-sweep.timer's block

    def services(prune: str) -> str:
        # systemctl show's shape (one KEY=VALUE block per unit, as SHOW_SERVICE asks)
        return (
            "Id=nightly-sweep.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n\n"
            f"Id=ci-docker-prune.service\nLoadState=loaded\n{prune}\n"
        )

    def machine(prune: str) -> Systemctl:
        return Systemctl(
            {
                tuple(show_argv(["nightly-sweep.timer"], SHOW_TIMER)): (0, timers, ""),
                tuple(show_argv(["nightly-sweep.service", "ci-docker-prune.service"],
                                SHOW_SERVICE)): (0, services(prune), ""),
            }
        )  # fmt: skip

    now = _utc("2026-06-03 12:00:00")  # days before nightly-sweep.timer fires (06-07 03:00)
    pruning = read_sweeps(machine("ActiveState=activating\nSubState=start"), runs.sweep_units)
    assert sweep_activity(pruning, now, runs.sweep_lead_s, where="on the target host") == [
        "sweep ci-docker-prune.service running on the target host (activating/start)"
    ]
    idle = read_sweeps(machine("ActiveState=inactive\nSubState=dead"), runs.sweep_units)
    assert sweep_activity(idle, now, runs.sweep_lead_s, where="on the target host") == []
