"""A stage's long waits as Prefect progress artifacts (the run page shows how far along)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

from pvcheck import progress
from pvcheck.masking import redact

STEP_PCT = 5.0  # update the artifact in steps, not on every poll


@contextlib.contextmanager
def progress_artifacts(stage: str) -> Iterator[None]:
    """Inside a task: one progress artifact per kind of wait (the text before its ':'),
    named after the stage, set to 100 % when the task's waiting is over. An API hiccup never
    stops the wait."""
    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        yield  # called as a plain function (tests, the benchmark): no API to show it in
        return
    shown: dict[str, tuple[UUID, float, str]] = {}

    def show(what: str, fraction: float) -> None:
        what = redact(f"{stage}: {what}")
        kind, pct = ":".join(what.split(":")[:2]), round(100.0 * fraction, 1)
        try:
            if kind not in shown:
                made = create_progress_artifact(pct, description=what)
                assert isinstance(made, UUID)  # the sync call (async_dispatch) gives the id
                shown[kind] = (made, pct, what)
            elif pct - shown[kind][1] >= STEP_PCT:
                update_progress_artifact(shown[kind][0], pct, description=what)
                shown[kind] = (shown[kind][0], pct, what)
        except Exception as exc:  # progress is a courtesy; the wait goes on
            get_run_logger().debug("progress artifact not updated: %s", exc)

    try:
        with progress.listening(show):
            yield
    finally:
        for artifact, _, what in shown.values():
            with contextlib.suppress(Exception):
                update_progress_artifact(artifact, 100.0, description=f"{what} (done)")
