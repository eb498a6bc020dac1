"""The janitor flow: reap what dead pvcheck runs left (runs this machine recorded as started
and whose process is gone), and nothing else. The automation in deployments/ runs it after a
crashed verification run; every verification run also starts with it."""

from __future__ import annotations

import os

from prefect import State, flow
from prefect.states import Completed, Failed
from pydantic import BaseModel, ConfigDict, Field

from pvcheck.config import load_config
from pvcheck.pinned import pinned_path
from pvcheck.records import Status
from pvcheck.runs import EngineLock, HostLock, RunRegistry
from pvcheck.swarm import Swarm
from tasks.engine import connect
from tasks.teardown import reap_dead_runs


class JanitorParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a stale or made-up field is an error

    config: str = Field(
        "", description="which served config, by its target name (empty: the first)", max_length=63
    )


@flow(name="pvcheck-janitor", log_prints=False)
def janitor(params: JanitorParameters | None = None) -> State:
    params = params or JanitorParameters()
    cfg = load_config(pinned_path(params.config))
    with HostLock(cfg.target.state_dir, cfg.target.docker_host):
        seams = connect(cfg, f"janitor-{os.getpid()}", with_driver=False)
        assert isinstance(seams.swarm, Swarm)
        registry = RunRegistry(cfg.target.state_dir, cfg.target.docker_host)
        with EngineLock(seams.swarm, f"janitor-{os.getpid()}"):
            check = reap_dead_runs(seams, registry, cfg.allocator.settle_timeout_s)
    if check.status != Status.PASS:
        return Failed(message=f"janitor: {check.found}")
    return Completed(message=f"janitor: {check.found}")
