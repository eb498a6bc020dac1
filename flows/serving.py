"""The Prefect deployments of pvcheck and `pvcheck serve`.

- `pvcheck-verify/manual`: the verification run, triggered from the UI (parameter form);
- `pvcheck-verify/nightly`: the same on a cron schedule (a quiet hour, in a time zone);
- `pvcheck-review/review`: the independent review run;
- `pvcheck-janitor/janitor`: reaps dead runs (the crash automation runs it).
Each has concurrency limit 1 with new runs cancelled on collision; runs of different
deployments against one host are serialized by the host lock (a colliding run ends Cancelled).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from pydantic import BaseModel

from flows.janitor import JanitorParameters, janitor
from flows.review import ReviewParameters, review
from flows.verify import RunParameters, verify
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

# The nightly re-check, in UTC: 01:17 every day, clear of cc-ci's weekly /upgrade-all sweep
# (Saturdays from 03:00 UTC), whose Step 0 may restart docker under a running check. A run
# that still meets a sweep (its marker) waits within deploy.active_runs.wait_s, then ends
# INCOMPLETE.
NIGHTLY_CRON = "17 1 * * *"
SWEEP_WINDOW_UTC = (5, 3, 9)  # Saturday (Monday = 0), 03:00 to 09:00: no default run there

ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def build_deployments(
    configs: dict[str, Config], cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[Any]:
    """The deployments; their parameters name a pinned config, never a path."""
    first = next(iter(configs))
    nightly = {"schedule": Cron(cron, timezone=timezone)}
    table: list[tuple[Any, str, type[BaseModel], dict[str, Any], str]] = [
        (
            verify,
            "manual",
            RunParameters,
            {},
            "Verify the host now (the form holds the capped knobs).",
        ),
        (verify, "nightly", RunParameters, nightly, "Nightly re-check."),
        (review, "review", ReviewParameters, {}, "Independent review of the claimed gates."),
        (janitor, "janitor", JanitorParameters, {}, "Reap what dead pvcheck runs left."),
    ]
    return [
        flow.to_deployment(
            name=name,
            parameters={"params": params(config=first).model_dump()},
            description=description,
            concurrency_limit=ONE_AT_A_TIME,
            tags=["pvcheck"],
            **extra,
        )
        for flow, name, params, extra, description in table
    ]


def ensure_server(
    state_dir: Path, host: str = "127.0.0.1", port: int = 4200, timeout_s: float = 180
) -> str:
    """Attach to PREFECT_API_URL, which must refuse calls without credentials; or start a
    server of pvcheck's own on host:port, with an auth string, that dies with this process.

    An API anyone on the machine can call would let any local user start runs as root; a
    port someone else already listens on could be theirs: both are refused.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not api_healthy(url):
            raise PrefectUnavailable(f"PREFECT_API_URL={url} does not answer /health")
        if accepts_anonymous(url):
            raise PvcheckError(
                f"the Prefect API at {url} accepts calls without credentials: any local user "
                "could start runs as root. Set PREFECT_SERVER_API_AUTH_STRING on the server "
                "and PREFECT_API_AUTH_STRING here"
            )
        return url
    url = f"http://{host}:{port}/api"
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise PvcheckError(
                f"{host}:{port} is already taken; pvcheck serve starts its own Prefect server "
                "there (it never attaches to one it did not start). Stop it, or set "
                "PREFECT_API_URL to a server you run with PREFECT_SERVER_API_AUTH_STRING"
            )
    auth = auth_string(state_dir / "prefect-api-auth")
    proc = start_server(host, port, auth, ui=True)
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
    from prefect import serve

    first = next(iter(configs.values()))
    url = ensure_server(first.target.state_dir)
    print(f"serving pvcheck deployments on {url} (nightly cron {cron!r} {timezone})", flush=True)
    # Schedules stay active when the server goes away or this process restarts.
    serve(*build_deployments(configs, cron, timezone), pause_on_shutdown=False)
