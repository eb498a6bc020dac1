"""Sweeps from their systemd timers: is a sweep's service running, and when does its timer fire.

cc-ci's sweeps are systemd timers on the machine that owns them: `cc-ci-upgrade-all.timer` on
the orchestrator (OnCalendar=Sun *-*-* 02:00:00 UTC, Persistent=true since 2026-06-02:
https://git.autonomic.zone/recipe-maintainers/cc-ci/commit/5cda830644de4a243e4b5c5bdf59866cc83f145b)
and `nightly-sweep.timer` on the host (weekly `Sun *-*-* 03:00:00` since the canon phase:
machine-docs/STATUS-canon.md at cc-ci commit 618ac1ef6f4fbda414835cbccf0ebced40ed5f53). The
schedule is read from the machine, never assumed: `systemctl show` gives the timer's state,
the unit it triggers, its next and last elapse and its calendar, then the service's state.
Property names and value shapes are systemd's: `TimersCalendar={ OnCalendar=SPEC ;
next_elapse=TIMESTAMP }` (systemctl-show.c), timestamps as `Sun 2026-06-14 02:00:00 UTC`
(format_timestamp, in the zone of the systemctl process: pvcheck runs it with TZ=UTC) or empty
/ `n/a` when unset. `systemd-analyze calendar` computes a next elapse when the timer's own
cannot be read. Unit text (a file, or `systemctl cat` with its drop-ins) is parsed for the
`OnCalendar=` expressions in force: an empty assignment clears the earlier ones.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pvcheck.liveness import TIMEOUT_S, CommandRunner

SHOW_TIMER = (
    "Id", "LoadState", "ActiveState", "SubState", "Unit", "NextElapseUSecRealtime",
    "LastTriggerUSec", "Persistent", "TimersCalendar",
)  # fmt: skip
SHOW_SERVICE = ("Id", "LoadState", "ActiveState", "SubState")
# A service with processes: started, running, reloading or stopping (not `exited`: a
# RemainAfterExit oneshot that is done). A running oneshot is `activating`/`start`.
_LIVE_STATES = {"active", "activating", "deactivating", "reloading", "refreshing"}
_DONE_SUBSTATES = {"exited", "dead", "failed"}
_NO_SYSTEMD = "not been booted with systemd"
_TIMESTAMP = re.compile(
    r"^(?:[A-Za-z]{3} )?(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.\d+)? (?:UTC|GMT)$"
)
_CALENDAR = re.compile(r"^\{ (?P<base>\w+)=(?P<spec>.*?) ; next_elapse=(?P<next>.*) \}$")
_TRUE = {"1", "yes", "true", "on"}

Props = dict[str, list[str]]


def _env(argv: list[str]) -> list[str]:
    # Timestamps in UTC and untranslated, whatever the machine's zone and locale.
    return ["env", "TZ=UTC", "LC_ALL=C", *argv]


def show_argv(units: list[str], properties: tuple[str, ...]) -> list[str]:
    argv = ["systemctl", "show", "--no-pager"]
    for prop in properties:
        argv += ["-p", prop]
    return _env([*argv, "--", *units])


def parse_show(text: str) -> list[Props]:
    """Pure: `systemctl show` output, one block of KEY=VALUE lines per unit (blank lines
    between units); a key printed more than once (TimersCalendar) keeps every value."""
    blocks: list[Props] = []
    current: Props = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current.setdefault(key, []).append(value)
    if current:
        blocks.append(current)
    return blocks


def _one(props: Props, key: str) -> str:
    return (props.get(key) or [""])[0].strip()


def parse_timestamp(value: str) -> datetime | None:
    """Pure: a systemd timestamp in UTC (`Sun 2026-06-14 02:00:00 UTC`, or `@SECONDS`);
    None when unset (empty, `n/a`, `0`) or in another zone."""
    text = value.strip()
    if text.startswith("@"):
        try:
            return datetime.fromtimestamp(float(text[1:]), UTC)
        except (ValueError, OverflowError, OSError):
            return None
    found = _TIMESTAMP.match(text)
    if found is None:
        return None
    try:
        return datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:  # the shape matched, the date does not exist (2026-13-40)
        return None


@dataclass(frozen=True)
class CalendarTimer:
    base: str  # OnCalendar
    spec: str  # the normalized expression, `Sun *-*-* 02:00:00 UTC`
    next_elapse: datetime | None


def parse_calendars(values: list[str]) -> list[CalendarTimer]:
    """Pure: the TimersCalendar values of `systemctl show`."""
    timers = []
    for value in values:
        found = _CALENDAR.match(value.strip())
        if found:
            timers.append(
                CalendarTimer(found["base"], found["spec"], parse_timestamp(found["next"]))
            )
    return timers


def unit_directives(unit_text: str, section: str) -> dict[str, list[str]]:
    """Pure: a section's directives in a unit's text (a file, or `systemctl cat`: the file
    and its drop-ins in order); an empty assignment clears what came before, as systemd
    reads list settings such as OnCalendar=."""
    found: dict[str, list[str]] = {}
    current = ""
    pending = ""
    for raw in unit_text.splitlines():
        line = (pending + raw.strip()) if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if current != section or not sep:
            continue
        key, value = key.strip(), value.strip()
        if value:
            found.setdefault(key, []).append(value)
        else:
            found[key] = []
    return found


def on_calendar(unit_text: str) -> list[str]:
    """Pure: the OnCalendar= expressions in force in a timer's unit text."""
    return unit_directives(unit_text, "Timer").get("OnCalendar", [])


def persistent(unit_text: str) -> bool:
    """Pure: whether the timer's unit text sets Persistent= (the last assignment counts)."""
    values = unit_directives(unit_text, "Timer").get("Persistent", [])
    return bool(values) and values[-1].lower() in _TRUE


@dataclass(frozen=True)
class CalendarNext:
    normalized: str
    next_elapse: datetime | None  # None: the expression never elapses again
    later: tuple[datetime, ...] = ()  # the elapses after it (`--iterations`)


def parse_analyze_calendar(text: str) -> list[CalendarNext]:
    """Pure: `systemd-analyze calendar SPEC...` output, one block per expression (the UTC
    line preferred: `(in UTC): Sun 2026-06-14 02:00:00 UTC`)."""
    found: list[CalendarNext] = []
    block: dict[str, str] = {}

    later: list[datetime] = []

    def close() -> None:
        if "Normalized form" in block:
            when = block.get("(in UTC)") or block.get("Next elapse", "")
            found.append(
                CalendarNext(block["Normalized form"], parse_timestamp(when), tuple(later))
            )

    for line in text.splitlines():
        if not line.strip():
            close()
            block = {}
            later.clear()
            continue
        key, sep, value = line.strip().partition(": ")
        if not sep:
            continue
        if key.startswith("Iter. #"):  # `--iterations`: one line per later elapse
            moment = parse_timestamp(value.strip())
            if moment is not None:
                later.append(moment)
        else:
            block[key.strip()] = value.strip()
    close()
    return found


def service_running(active_state: str, sub_state: str) -> bool:
    """Pure: whether a service has processes now (a sweep in progress)."""
    return active_state in _LIVE_STATES and sub_state not in _DONE_SUBSTATES


@dataclass(frozen=True)
class Sweep:
    """One configured sweep unit as read: its timer (when a timer was named) and the service
    that does the work."""

    unit: str  # as configured: a .timer or a .service
    load_state: str  # the configured unit's: loaded, not-found, masked, ...
    service: str
    service_state: str  # `ActiveState/SubState` of the service
    running: bool
    next_elapse: datetime | None = None
    last_trigger: datetime | None = None
    persistent: bool | None = None
    schedule: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepRead:
    sweeps: list[Sweep] = field(default_factory=list)
    problem: str | None = None  # the units could not be read: a sweep may be active
    no_systemd: bool = False  # the machine does not run systemd: no timer can fire there


def _by_id(blocks: list[Props], units: list[str]) -> dict[str, Props]:
    named = {_one(b, "Id"): b for b in blocks if _one(b, "Id")}
    # Without Id lines the blocks come in the order the units were given.
    return {u: named.get(u) or (blocks[i] if i < len(blocks) else {}) for i, u in enumerate(units)}


def _show(host: CommandRunner, units: list[str], props: tuple[str, ...]) -> dict[str, Props]:
    rc, out, err = host.run(show_argv(units, props), timeout_s=TIMEOUT_S)
    if rc != 0:
        raise _Unreadable(err.strip()[-200:] or f"systemctl exited {rc}")
    return _by_id(parse_show(out), units)


MAX_SPECS = 20  # OnCalendar expressions handed to systemd-analyze at once (host text)


class _Unreadable(Exception):
    pass


def _next_from_calendar(host: CommandRunner, specs: list[str]) -> datetime | None:
    """The earliest next elapse of the expressions, by systemd-analyze on the same machine."""
    rc, out, _ = host.run(
        _env(["systemd-analyze", "calendar", "--", *specs[:MAX_SPECS]]), timeout_s=TIMEOUT_S
    )
    times = [c.next_elapse for c in parse_analyze_calendar(out) if c.next_elapse]
    return min(times) if rc == 0 and times else None


def read_sweeps(host: CommandRunner, units: list[str]) -> SweepRead:
    """The state of each sweep unit on the machine `host` runs commands on."""
    if not units:
        return SweepRead()
    timers = [u for u in units if u.endswith(".timer")]
    try:
        timer_props = _show(host, timers, SHOW_TIMER) if timers else {}
        triggered = {
            t: _one(p, "Unit") or t.removesuffix(".timer") + ".service"
            for t, p in timer_props.items()
        }
        services = list(dict.fromkeys(triggered.get(u, u) for u in units))
        service_props = _show(host, services, SHOW_SERVICE)
        sweeps = []
        for unit in units:
            service = triggered.get(unit, unit)
            svc = service_props.get(service, {})
            active, sub = _one(svc, "ActiveState"), _one(svc, "SubState")
            own = timer_props.get(unit, svc)
            sweep = Sweep(
                unit, _one(own, "LoadState") or "unknown", service, f"{active}/{sub}",
                service_running(active, sub),
            )  # fmt: skip
            if unit in timer_props:
                sweep = _with_timer(host, sweep, own)
            sweeps.append(sweep)
    except _Unreadable as exc:
        if _NO_SYSTEMD in str(exc):
            return SweepRead(no_systemd=True)
        return SweepRead(problem=str(exc))
    except subprocess.TimeoutExpired as exc:
        return SweepRead(problem=f"no answer within {exc.timeout:g}s")
    return SweepRead(sweeps)


def _with_timer(host: CommandRunner, sweep: Sweep, props: Props) -> Sweep:
    calendars = parse_calendars(props.get("TimersCalendar", []))
    next_elapse = parse_timestamp(_one(props, "NextElapseUSecRealtime"))
    if next_elapse is None:
        next_elapse = min((c.next_elapse for c in calendars if c.next_elapse), default=None)
    armed = _one(props, "ActiveState") == "active" and not sweep.running
    if next_elapse is None and armed and calendars:
        next_elapse = _next_from_calendar(host, [c.spec for c in calendars])
    persistent = _one(props, "Persistent")
    return Sweep(
        sweep.unit, sweep.load_state, sweep.service, sweep.service_state, sweep.running,
        next_elapse if armed else None,
        parse_timestamp(_one(props, "LastTriggerUSec")),
        persistent.lower() in _TRUE if persistent else None,
        tuple(c.spec for c in calendars),
    )  # fmt: skip


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def sweep_activity(
    read: SweepRead, now: datetime, lead_s: float = 0.0, window_s: float = 0.0, where: str = ""
) -> list[str]:
    """Pure: the sweeps that count as active now: a running service, a timer due within
    `lead_s` (or overdue), one that fired less than `window_s` ago; a unit that cannot be
    read counts too (pvcheck cannot tell that no sweep runs). A machine without systemd
    runs no timer."""
    on = f" {where}" if where else ""
    if read.problem:
        return [f"sweep units{on} cannot be read ({read.problem}); a sweep may be active"]
    found = []
    for sweep in read.sweeps:
        if sweep.load_state not in ("loaded", "masked"):
            found.append(
                f"sweep unit {sweep.unit}{on} is {sweep.load_state}: pvcheck cannot tell "
                "whether it runs"
            )
            continue
        if sweep.running:
            by = f", started by {sweep.unit}" if sweep.unit != sweep.service else ""
            found.append(f"sweep {sweep.service} running{on} ({sweep.service_state}{by})")
            continue
        due = sweep.next_elapse
        if lead_s > 0 and due is not None and due <= now + timedelta(seconds=lead_s):
            found.append(f"sweep {sweep.unit}{on} fires at {_when(due)}, within {lead_s:g}s")
        last = sweep.last_trigger
        if window_s > 0 and last is not None and now - timedelta(seconds=window_s) <= last:
            found.append(
                f"sweep {sweep.unit}{on} fired at {_when(last)}, less than {window_s:g}s ago"
            )
    return found


# --- the nightly schedule against the sweeps (serve) ----------------------------------------
SCHEDULE_DAYS = 8  # a week of nightly runs, and the weekly sweeps in it


def sweep_elapses(
    host: CommandRunner, specs: tuple[str, ...], until: datetime
) -> list[datetime] | None:
    """When the calendar expressions fire from now until `until`, by systemd-analyze on the
    machine that owns the timer (an hourly timer gives at most 200); None when it cannot
    tell."""
    if not specs:
        return []
    try:
        rc, out, _ = host.run(
            _env(["systemd-analyze", "calendar", "--iterations=200", "--", *specs[:MAX_SPECS]]),
            timeout_s=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None
    if rc != 0:
        return None
    found = []
    for cal in parse_analyze_calendar(out):
        for moment in (cal.next_elapse, *cal.later):
            if moment is not None and moment <= until:
                found.append(moment)
    return sorted(found)


@dataclass(frozen=True)
class SweepWindow:
    """A sweep timer as the nightly schedule must avoid it."""

    unit: str
    where: str  # "on the target host" / "on this machine"
    schedule: tuple[str, ...]
    elapses: tuple[datetime, ...]
    problem: str | None = None  # why its schedule could not be read


def nightly_clashes(
    nightly: list[datetime], windows: list[SweepWindow], lead_s: float, window_s: float
) -> list[str]:
    """Pure: the nightly runs that would meet a sweep: one starting `lead_s` before a sweep
    fires to `window_s` after it (and at least an hour after, the sweep's run) would wait,
    then end INCOMPLETE."""
    after = max(window_s, 3600.0)
    found = []
    for win in windows:
        for fire in win.elapses:
            for start in nightly:
                if fire - timedelta(seconds=lead_s) <= start <= fire + timedelta(seconds=after):
                    found.append(
                        f"the nightly run at {_when(start)} meets {win.unit} {win.where} "
                        f"(fires {_when(fire)})"
                    )
    return sorted(set(found))


def describe_windows(windows: list[SweepWindow]) -> str:
    """Pure: the sweeps a nightly schedule was checked against, for people."""
    parts = []
    for win in windows:
        if win.problem:
            parts.append(f"{win.unit} {win.where} (unread: {win.problem})")
        else:
            spec = "; ".join(win.schedule) or "no calendar"
            parts.append(f"{win.unit} {win.where} ({spec})")
    return ", ".join(parts)


def read_windows(
    places: list[tuple[list[str], CommandRunner, str]], now: datetime
) -> list[SweepWindow]:
    """Each configured sweep timer's schedule and its elapses over the next SCHEDULE_DAYS,
    read on the machine that owns it."""
    until = now + timedelta(days=SCHEDULE_DAYS)
    windows = []
    for units, machine, where in places:
        timers = [u for u in units if u.endswith(".timer")]
        if not timers:
            continue
        read = read_sweeps(machine, timers)
        if read.no_systemd:
            continue  # no timer can fire there
        if read.problem:
            windows += [SweepWindow(u, where, (), (), read.problem) for u in timers]
            continue
        for sweep in read.sweeps:
            elapses = sweep_elapses(machine, sweep.schedule, until)
            problem = None if elapses is not None else "systemd-analyze could not compute it"
            windows.append(
                SweepWindow(sweep.unit, where, sweep.schedule, tuple(elapses or ()), problem)
            )
    return windows
