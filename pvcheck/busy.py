"""A run that meets another one on its host steps aside: it ends Cancelled, its message
naming the run that holds the host (its id, its flow run's link, its process), and leaves no
ERROR line or traceback behind.

Prefect 3.9 (flow_engine.run_flow) takes the result of a flow run's final state when the
engine runs it for a worker or `serve`; for a Cancelled state that raises `CancelledRun`,
which the engine logs to the flow run's log as ERROR "Engine execution exited with
unexpected exception" with a traceback, after the run has already ended Cancelled. Raising
instead of returning the state would end the run Failed. So a flow returns the Cancelled
state, and the one record the engine then writes about that very state is dropped: the state
and its message tell the whole story.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import State, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled

from pvcheck.errors import HostBusy
from pvcheck.masking import redact
from pvcheck.runs import Holder

# flow_engine.run_flow's message, to the logger of flow_engine.flow_run_logger
ENGINE_MESSAGE = "Engine execution exited with unexpected exception"
FLOW_RUN_LOGGER = "prefect.flow_runs"
CANCELLED_RUN = f"{CancelledRun.__module__}.{CancelledRun.__qualname__}"


def this_run(run_id: str) -> Holder:
    """This run as a lock file records it: pvcheck's run id, and the Prefect flow run (its
    id, and its page in the UI when the UI's address is known)."""
    found = flow_run.get_id()
    url = flow_run.get_flow_run_ui_url() if found and PREFECT_UI_URL.value() else None
    return Holder(run_id=run_id, flow_run_id=found or "", flow_run_url=url or "")


class StepAsideFilter(logging.Filter):
    """Drops the engine's ERROR record about a run that stepped aside (its CancelledRun
    carries the state's message); every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == ENGINE_MESSAGE and self._ours(record))

    def _ours(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return isinstance(exc, CancelledRun) and str(exc) in self.messages
        # Masking (pvcheck.masking) turned the exception into its text already: its last line.
        last = (record.exc_text or "").rstrip().rpartition("\n")[2]
        return any(last == f"{CANCELLED_RUN}: {redact(m)}" for m in self.messages)


def _filter() -> StepAsideFilter:
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    found = next((f for f in logger.filters if isinstance(f, StepAsideFilter)), None)
    if found is None:
        found = StepAsideFilter()
        logger.addFilter(found)
    return found


def step_aside(exc: HostBusy) -> State:
    """The flow's final state when the host is busy: Cancelled, saying who holds it."""
    message = str(exc)
    _filter().messages.add(message)
    get_run_logger().warning("%s", message)
    return Cancelled(message=message)


# The state message Prefect gives a run its deployment's concurrency limit cancelled
# (server/orchestration/core_policy.py, CANCEL_NEW): the run never starts, so pvcheck cannot
# speak in it; the run that held the slot can write in its log afterwards.
LIMIT_MESSAGE = "Deployment concurrency limit reached."


def limit_note(holder: Holder) -> str:
    """Pure: what a run the concurrency limit cancelled is told, in its own log."""
    return (
        f"pvcheck: this run never started: {holder.describe()} of this deployment was running, "
        "and the deployment runs one at a time (its concurrency limit cancels a run started "
        "meanwhile). Start it again once that one has finished."
    )


def explain_limit_cancellations(
    holder: Holder, deployment_id: str, since: datetime, client: Any
) -> list[str]:
    """Write why into the log of each run of this deployment that Prefect cancelled by its
    concurrency limit since `since` (while this run held the slot); their names."""
    from prefect.client.schemas.actions import LogCreate
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[UUID(deployment_id)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
        ),
        limit=50,
    )
    mine = str(holder.flow_run_id)
    cancelled = [
        r
        for r in runs
        if str(r.id) != mine
        and r.state is not None
        and r.state.message == LIMIT_MESSAGE
        and r.created is not None
        and r.created >= since
    ]
    now = datetime.now(UTC)
    note = limit_note(holder)
    if cancelled:
        client.create_logs(
            [
                LogCreate(
                    name="pvcheck",
                    level=logging.WARNING,
                    message=note,
                    timestamp=now,
                    flow_run_id=r.id,
                )
                for r in cancelled
            ]
        )
    return [str(r.name) for r in cancelled]


def explain_collisions(holder: Holder, since: datetime) -> None:
    """At the end of a deployment's run: tell each run the concurrency limit cancelled
    meanwhile why (in its own log), and list them in this run's log. A courtesy: an API
    that does not answer changes nothing about the run."""
    found = deployment.get_id()
    if not found or not holder.flow_run_id:
        return
    log = get_run_logger()
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            names = explain_limit_cancellations(holder, found, since, client)
    except Exception as exc:
        log.debug("runs cancelled by the concurrency limit not looked up: %s", exc)
        return
    if names:
        log.info(
            "started while this run was running, cancelled by the deployment's concurrency "
            "limit (their logs say why): %s",
            ", ".join(names),
        )
