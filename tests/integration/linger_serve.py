"""Serves one flow whose process lingers after the run has ended, as a pvcheck run's does
while it flushes logs and exits: `pvcheck` serves it with pvcheck's runner, `prefect` with
Prefect's own `serve` (to show the hazard pvcheck's runner avoids). Used by
test_prefect_server.py; not a test module itself."""

from __future__ import annotations

import sys
import threading
import time

from prefect import flow
from prefect.deployments.runner import RunnerDeployment

LINGER_S = 8.0


@flow(name="pvcheck-linger")
def linger() -> str:
    # A non-daemon thread: the interpreter waits for it before the process exits, after the
    # engine has already reported the run Completed.
    threading.Thread(target=time.sleep, args=(LINGER_S,), daemon=False).start()
    return "ended"


if __name__ == "__main__":
    deployment = linger.to_deployment(name="linger")
    assert isinstance(deployment, RunnerDeployment)  # the sync form, called outside a loop
    if sys.argv[1:] == ["prefect"]:
        from prefect import serve

        serve(deployment, pause_on_shutdown=False)
    else:
        from pvcheck.flows.serving import serve_deployments

        serve_deployments([deployment])
