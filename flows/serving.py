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
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from pydantic import BaseModel

from flows.janitor import JanitorParameters, janitor
from flows.review import ReviewParameters, review
from flows.verify import RunParameters, verify
from pvcheck.api import api_healthy, wait_healthy
from pvcheck.errors import PvcheckError

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
    config_path: str, cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[Any]:
    config_path = str(Path(config_path).resolve())
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
            parameters={"params": params(config_path=config_path).model_dump()},
            description=description,
            concurrency_limit=ONE_AT_A_TIME,
            tags=["pvcheck"],
            **extra,
        )
        for flow, name, params, extra, description in table
    ]


def ensure_server(host: str = "127.0.0.1", port: int = 4200, timeout_s: float = 180) -> str:
    """Attach to PREFECT_API_URL, or start `prefect server start` on host:port and use it."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not api_healthy(url):
            raise PvcheckError(f"PREFECT_API_URL={url} does not answer /health")
        return url
    url = f"http://{host}:{port}/api"
    if not api_healthy(url):
        prefect = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise PvcheckError(
                    f"{host}:{port} is taken by something that is not a Prefect server"
                )
        subprocess.Popen(
            [prefect, "server", "start", "--host", host, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_healthy(url, timeout_s):
            raise PvcheckError(f"prefect server did not answer on {url} within {timeout_s:g}s")
    os.environ["PREFECT_API_URL"] = url
    return url


def serve_all(config_path: str, cron: str, timezone: str) -> None:
    from prefect import serve

    url = ensure_server()
    print(f"serving pvcheck deployments on {url} (nightly cron {cron!r} {timezone})", flush=True)
    # Schedules stay active when the server goes away or this process restarts.
    serve(*build_deployments(config_path, cron, timezone), pause_on_shutdown=False)
