"""Task run names that say which run of a task it is (`capture-facts-before`,
`capture-facts-after`, `scan-docker-log-window`, …): the Prefect UI lists a flow run's task
runs by name, and one name three times says nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from prefect.tasks import TaskRunNameCallbackWithParameters


def run_name(fn: Callable[[dict[str, Any]], str]) -> TaskRunNameCallbackWithParameters:
    """`fn` as a task's `task_run_name`: Prefect calls a callable whose argument is named
    `parameters` with the task call's parameters (by name)."""
    return cast(TaskRunNameCallbackWithParameters, fn)
