"""The Prefect deployments of pvcheck and `pvcheck serve`.

- `pvcheck-verify/manual`: the verification run, triggered from the UI (parameter form);
- `pvcheck-verify/nightly`: the same on a cron schedule (a quiet hour, in a time zone);
- `pvcheck-review/review`: the independent review run;
- `pvcheck-janitor/janitor`: reaps dead runs (the crash automation runs it).
Serving several configs (a fleet) gives each host its own four, named `manual-<target>` …,
with nightly schedules STAGGER_MIN minutes apart.
Each has concurrency limit 1 with new runs cancelled on collision; runs of different
deployments against one host are serialized by the host lock (a colliding run ends Cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from cronsim import CronSim
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Cron
from prefect.utilities.annotations import freeze

from pvcheck.api import (
    accepts_anonymous,
    api_healthy,
    auth_string,
    listener_is_ours,
    start_server,
    use_api,
    wait_healthy,
)
from pvcheck.config import Config
from pvcheck.errors import PrefectUnavailable, PvcheckError
from pvcheck.flows.janitor import janitor
from pvcheck.flows.review import review
from pvcheck.flows.verify import RunParameters, verify
from pvcheck.hosts import host_for
from pvcheck.liveness import CommandRunner, Here
from pvcheck.safeio import require_root_only_tree
from pvcheck.timers import (
    SCHEDULE_DAYS,
    describe_windows,
    nightly_clashes,
    read_windows,
)

# The nightly re-check: 00:17 every day. `serve` checks it against the sweep timers the config
# names, read on the machines that own them (cc-ci: Sundays 02:00 UTC on the orchestrator,
# 03:00 on the host), and says which windows it avoids or meets. A run that still meets a
# sweep waits within deploy.active_runs.wait_s, then ends INCOMPLETE.
NIGHTLY_CRON = "17 0 * * *"

ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


# What the concurrency limit and the host lock do, in every deployment's description (the
# UI's Description tab): a cancelled run's own page says only Prefect's few words.
COLLISIONS = (
    "One run of this deployment at a time: a run started while another one of it is pending "
    'or running is cancelled by Prefect before it starts ("Deployment concurrency limit '
    'reached."); start it again once that one has finished. A run of another pvcheck '
    "deployment that finds this host busy ends Cancelled too, naming the run that holds it."
)

STAGGER_MIN = 20  # a fleet's hosts start their nightly checks this many minutes apart


def stagger(cron: str, index: int) -> str:
    """Pure: the cron moved `index` * STAGGER_MIN minutes later (carrying into the hour when
    both fields are plain numbers; a cron with ranges or steps is kept as given)."""
    fields = cron.split()
    if index == 0 or len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()):
        return cron
    total = int(fields[1]) * 60 + int(fields[0]) + index * STAGGER_MIN
    fields[0], fields[1] = str(total % 60), str((total // 60) % 24)
    return " ".join(fields)


def schedule_label(cron: str, timezone: str) -> str:
    """Pure: the nightly schedule as the deployment page names it (its slug), time zone
    included: the UI's own wording of a cron leaves the zone out."""
    fields = cron.split()
    if len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit() and fields[2:] == ["*"] * 3:
        return f"every day at {int(fields[1]):02d}:{int(fields[0]):02d} {timezone}"
    return f"cron {cron} ({timezone})"


def deployment_name(kind: str, target: str, fleet: bool) -> str:
    """`manual` for one served host; `manual-<target>` for each host of a fleet."""
    return f"{kind}-{target}" if fleet else kind


def nightly_times(cron: str, timezone: str, now: datetime, days: int) -> list[datetime]:
    """Pure: when the cron fires from `now` for `days` days, in UTC."""
    zone = ZoneInfo(timezone)
    until = now + timedelta(days=days)
    found = []
    for moment in CronSim(cron, now.astimezone(zone)):
        if moment > until:
            break
        found.append(moment.astimezone(UTC))
    return found


def check_nightly(cfg: Config, cron: str, timezone: str, now: datetime) -> tuple[str, list[str]]:
    """The sweep timers the nightly schedule was checked against (for the description) and
    the nightly runs that would meet one, each read where the timer lives."""
    active = cfg.deploy.active_runs if cfg.deploy is not None else None
    if active is None or not (active.sweep_units or active.sweep_units_here):
        return "no sweep timer configured", []
    places: list[tuple[list[str], CommandRunner, str]] = [
        (list(active.sweep_units), host_for(cfg.target), "on the target host"),
        (list(active.sweep_units_here), Here(), "on this machine"),
    ]
    windows = read_windows(places, now)
    if not windows:
        return "no sweep timer could fire (no systemd where they are configured)", []
    nightly = nightly_times(cron, timezone, now, SCHEDULE_DAYS)
    clashes = nightly_clashes(nightly, windows, active.sweep_lead_s, active.sweep_window_s)
    return describe_windows(windows), clashes


def deployment_table(
    configs: dict[str, Config],
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    sweeps: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Pure: every deployment `serve` builds (and prefect.yaml declares): flow, name,
    parameters (the config's values; a target name, never a path), schedule, description.
    `sweeps`: per target, the sweep timers its nightly schedule was checked against."""
    fleet = len(configs) > 1
    table = []
    for index, (name, cfg) in enumerate(configs.items()):
        nightly = stagger(cron, index)
        host = f"`{name}` ({cfg.target.docker_host})"
        checked = (sweeps or {}).get(name)
        against = (
            f"checked against the sweep timers: {checked}"
            if checked
            else "sweep timers are checked by `pvcheck serve`"
        )
        rows: list[tuple[Any, str, dict[str, Any], str | None, str]] = [
            (
                verify,
                "manual",
                RunParameters.form(cfg),
                None,
                f"Verify {host} now: control plane and routing (M1), a real recipe deploy "
                "and the allocator reproduction (M2). The form's limits are pvcheck's hard "
                "caps.",
            ),
            (
                verify,
                "nightly",
                RunParameters.form(cfg),
                nightly,
                f"Re-check {host} every night: cron `{nightly}` in time zone {timezone} "
                f"({against}; a run that meets a sweep waits, then ends INCOMPLETE).",
            ),
            (
                review,
                "review",
                {"target": name},
                None,
                f"Independent review of {host}'s claimed gates (the Adversary): re-measures "
                "the host, writes REVIEW; `pvcheck done` reads it.",
            ),
            (
                janitor,
                "janitor",
                {"target": name},
                None,
                f"Remove what killed or crashed pvcheck runs left on {host}, by their run "
                "labels only.",
            ),
        ]
        for flow, kind, parameters, schedule, description in rows:
            table.append(
                {
                    "flow": flow,
                    "name": deployment_name(kind, name, fleet),
                    "parameters": parameters,
                    "cron": schedule,
                    "timezone": timezone,
                    "description": f"{description} {COLLISIONS}",
                    "slug": schedule_label(schedule, timezone) if schedule else None,
                    "tags": ["pvcheck", f"host:{name}"],
                }
            )
    return table


ENTRYPOINTS = {
    "pvcheck-verify": "flows/verify.py:verify",
    "pvcheck-review": "flows/review.py:review",
    "pvcheck-janitor": "flows/janitor.py:janitor",
}
WORK_POOL = "pvcheck"


def prefect_yaml(
    configs: dict[str, Config],
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    pool: str = WORK_POOL,
) -> str:
    """Pure: prefect.yaml declaring the deployments `serve` builds, for a process work pool
    (`prefect deploy --all`, then `pvcheck worker`). Flow runs start in the checkout named by
    PVCHECK_HOME in the worker's environment."""
    deployments = []
    for row in deployment_table(configs, cron, timezone):
        entry: dict[str, Any] = {
            "name": row["name"],
            "entrypoint": ENTRYPOINTS[row["flow"].name],
            "description": row["description"],
            "tags": row["tags"],
            "parameters": row["parameters"],
            "work_pool": {"name": pool},
            "concurrency_limit": {"limit": 1, "collision_strategy": "CANCEL_NEW"},
            "schedules": (
                [
                    {
                        "cron": row["cron"],
                        "timezone": row["timezone"],
                        "slug": row["slug"],
                        "active": True,
                    }
                ]
                if row["cron"]
                else []
            ),
        }
        deployments.append(entry)
    doc = {
        "name": "pvcheck",
        "prefect-version": "3",
        "build": None,
        "push": None,
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $PVCHECK_HOME }}"
                }
            }
        ],
        "deployments": deployments,
    }
    header = (
        "# Generated by `pvcheck prefect-yaml`; a test keeps it equal to what `pvcheck serve`\n"
        "# builds for the same configs. `prefect deploy --all`, then `pvcheck worker`\n"
        "# (docs/operations.md).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def build_deployments(
    configs: dict[str, Config],
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    sweeps: dict[str, str] | None = None,
) -> list[Any]:
    """The deployments `pvcheck serve` runs, one set per served config."""
    return [
        row["flow"].to_deployment(
            name=row["name"],
            # The host is the deployment's own: the form shows it read-only, and the server
            # refuses a run that names another one.
            parameters={**row["parameters"], "target": freeze(row["parameters"]["target"])},
            description=row["description"],
            concurrency_limit=ONE_AT_A_TIME,
            tags=row["tags"],
            **(
                {"schedule": Cron(row["cron"], timezone=row["timezone"], slug=row["slug"])}
                if row["cron"]
                else {}
            ),
        )
        for row in deployment_table(configs, cron, timezone, sweeps)
    ]


def drop_stale_schedules(deployments: list[Any], client: Any) -> list[str]:
    """Remove the schedules a served deployment no longer has (its slug names its time and
    time zone; Prefect keeps a schedule whose slug a re-served deployment does not name, so
    a changed --cron or --timezone would otherwise leave two nightly runs). Only deployments
    with schedules of their own are touched. Returns what was removed."""
    from prefect.exceptions import ObjectNotFound

    dropped = []
    for dep in deployments:
        wanted = {s.slug for s in dep.schedules or []}
        if not wanted:
            continue
        try:
            current = client.read_deployment_by_name(f"{dep.flow_name}/{dep.name}")
        except ObjectNotFound:
            continue
        for schedule in current.schedules or []:
            if schedule.slug not in wanted:
                client.delete_deployment_schedule(current.id, schedule.id)
                dropped.append(f"{dep.flow_name}/{dep.name}: {schedule.slug or schedule.id}")
    return dropped


def require_guarded_api() -> str:
    """PREFECT_API_URL, which must answer and refuse calls without credentials (a worker
    runs whatever the API hands it, as root)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise PvcheckError(
            "set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) to the Prefect server the "
            "worker takes its runs from"
        )
    if not api_healthy(url):
        raise PrefectUnavailable(f"PREFECT_API_URL={url} does not answer /health")
    if accepts_anonymous(url):
        raise PvcheckError(
            f"the Prefect API at {url} accepts calls without credentials: any local user "
            "could start runs as root. Set PREFECT_SERVER_API_AUTH_STRING on the server "
            "and PREFECT_API_AUTH_STRING here"
        )
    return url


def ensure_server(
    state_dir: Path, host: str = "127.0.0.1", port: int = 4200, timeout_s: float = 180
) -> str:
    """Attach to PREFECT_API_URL, which must refuse calls without credentials; or start a
    server of pvcheck's own on host:port, with an auth string, that dies with this process.

    An API anyone on the machine can call would let any local user start runs as root; a
    port someone else already listens on could be theirs: both are refused.
    """
    if os.environ.get("PREFECT_API_URL"):
        return require_guarded_api()
    url = f"http://{host}:{port}/api"
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise PvcheckError(
                f"{host}:{port} is already taken; pvcheck serve starts its own Prefect server "
                "there (it never attaches to one it did not start). Stop it, or set "
                "PREFECT_API_URL to a server you run with PREFECT_SERVER_API_AUTH_STRING"
            )
    auth = auth_string(state_dir / "prefect-api-auth")
    proc = start_server(host, port, auth)
    if not wait_healthy(url, timeout_s, proc):
        raise PrefectUnavailable(f"prefect server did not answer on {url} within {timeout_s:g}s")
    if not listener_is_ours(port, proc.pid):
        proc.terminate()
        raise PvcheckError(
            f"{host}:{port} answers, but not from the server pvcheck started (someone took "
            "the port meanwhile); nothing was sent to it"
        )
    use_api(url, auth)
    print(f"Prefect UI login (auth string): in {state_dir / 'prefect-api-auth'}", flush=True)
    return url


def serve_all(configs: dict[str, Config], cron: str, timezone: str) -> None:
    first = next(iter(configs.values()))
    url = ensure_server(first.target.state_dir)
    print(f"serving pvcheck deployments on {url} (nightly cron {cron!r} {timezone})", flush=True)
    sweeps = {}
    now = datetime.now(UTC)
    for index, (name, cfg) in enumerate(configs.items()):
        checked, clashes = check_nightly(cfg, stagger(cron, index), timezone, now)
        sweeps[name] = checked
        print(f"nightly of {name}: checked against {checked}", flush=True)
        for clash in clashes:
            print(f"WARNING: {clash}; choose another --cron", file=sys.stderr, flush=True)
    deployments = build_deployments(configs, cron, timezone, sweeps)
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for gone in drop_stale_schedules(deployments, client):
            print(f"removed the old schedule of {gone}", flush=True)
    serve_deployments(deployments)


# How long a stopping serve waits for the process of a run that has already ended to exit.
FINISHED_EXIT_S = 30.0


class FinishingRunner(Runner):
    """Prefect's runner, stopping without rewriting runs that have already ended.

    On SIGTERM Prefect's own runner cancels every flow run whose process it still tracks, with
    `force=True`, even one whose state is already final: a run that ended PASS a moment before
    (its process still flushing logs and exiting) becomes Cancelled ("Runner is shutting
    down.") and its abort hook sweeps the host again. Seen in CI on Prefect 3.9.1 with
    `systemctl stop`'s signal. Runs still going are cancelled as before; ended ones are given
    FINISHED_EXIT_S to exit, then killed, their state left as it is.
    """

    async def cancel_all(self) -> None:
        procs = getattr(self, "_process_manager", None)
        cancels = getattr(self, "_cancellation_manager", None)
        if procs is None or cancels is None:  # a Prefect without these: its own rule
            await super().cancel_all()
            return
        for run_id in procs.flow_run_ids():
            try:
                run = await self._client.read_flow_run(run_id)
            except Exception:
                self._logger.exception("could not read flow run %s while stopping", run_id)
                continue
            if run.state is None or not run.state.is_final():
                await cancels.cancel(run, state_msg="pvcheck serve was stopped during this run")
                continue
            if not await procs.wait_for_exit(run_id, grace_seconds=FINISHED_EXIT_S):
                with contextlib.suppress(ProcessLookupError):
                    await procs.kill(run_id, grace_seconds=0)
            self._logger.info("flow run %s had ended %s; left as it is", run.name, run.state.name)


def serve_deployments(deployments: list[Any]) -> None:
    """Prefect's `serve` with FinishingRunner; schedules stay active when the server goes
    away or this process restarts (no pause on shutdown)."""
    runner = FinishingRunner(pause_on_shutdown=False)
    for deployment in deployments:
        runner.add_deployment(deployment)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        print("pvcheck serve: stopped", flush=True)


# What in PVCHECK_HOME a flow run never loads, so is not walked. The pull step only makes
# PVCHECK_HOME the working folder, and Prefect puts it (and the entrypoint's folder) first on
# sys.path: every other file there can be imported, shadow a module, or be read as code
# (templates, lab scripts, egg-info entry points), __pycache__ too (a .pyc whose header
# matches its source is run instead of it). `.git` is git's store, never on sys.path; `.venv`
# is the interpreter this worker itself runs from (its own trust, not PVCHECK_HOME's).
HOME_NOT_RUN = frozenset({".git", ".venv"})


def start_worker(pool: str) -> None:
    """Become `prefect worker start` for a process pool. Its flow runs inherit this
    environment: the configs the caller pinned, and PVCHECK_HOME (where prefect.yaml's pull
    step starts them and their code is imported from), this installation unless given,
    which as root must be root's alone."""
    require_guarded_api()
    home = Path(os.environ.setdefault("PVCHECK_HOME", str(Path(__file__).resolve().parent.parent)))
    require_root_only_tree(home, "PVCHECK_HOME (the code flow runs import)", skip=HOME_NOT_RUN)
    prefect = str(Path(sys.executable).parent / "prefect")
    os.execv(prefect, [prefect, "worker", "start", "--pool", pool, "--type", "process"])
