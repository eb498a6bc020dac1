"""pvcheck: prove a Docker Swarm host is safe after its proxy overlay was recreated."""

import os

__version__ = "0.1.0"

# Machines pvcheck runs on may have no way out, and a CI host's tool has no business phoning
# home: Prefect's anonymous server analytics stay off unless the operator turns them on.
QUIET_PREFECT = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def quiet_prefect() -> None:
    for key, value in QUIET_PREFECT.items():
        os.environ.setdefault(key, value)
