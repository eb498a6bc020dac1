"""The janitor flow: reap what dead pvcheck runs left (runs this machine recorded as started
and whose process is gone), and nothing else. The automation in deployments/ runs it after a
crashed verification run; every verification run also starts with it."""

from __future__ import annotations

import os

from prefect import State, flow
from prefect.states import Completed, Failed

from pvcheck import runlog
from pvcheck.busy import step_aside, this_run
from pvcheck.config import load_config
from pvcheck.errors import HostBusy
from pvcheck.flows.params import TARGET, Host, served_config
from pvcheck.records import Status
from pvcheck.runs import EngineLock, HostLock, RunRegistry
from pvcheck.swarm import Swarm
from pvcheck.tasks.engine import connect
from pvcheck.tasks.teardown import reap_dead_runs


@flow(name="pvcheck-janitor", log_prints=False)
def janitor(target: Host = TARGET) -> State:
    """Reap what pvcheck runs that died (killed, crashed) left on the host, by their labels."""
    runlog.install()
    cfg = load_config(served_config(target))
    me = this_run(f"janitor-{os.getpid()}")
    try:
        with HostLock(cfg.target.state_dir, cfg.target.docker_host, me, cfg.target.ssh.config_file):
            seams = connect(cfg, me.run_id, with_driver=False)
            assert isinstance(seams.swarm, Swarm)
            registry = RunRegistry(
                cfg.target.state_dir, cfg.target.docker_host, cfg.target.ssh.config_file
            )
            with EngineLock(seams.swarm, me.run_id, flow_run_url=me.flow_run_url):
                check = reap_dead_runs(seams, registry, cfg.allocator.settle_timeout_s)
    except HostBusy as exc:
        # A run holds the host (it reaps at its own start): step aside, as verify does.
        return step_aside(exc)
    if check.status != Status.PASS:
        return Failed(message=f"janitor: {check.found}")
    return Completed(message=f"janitor: {check.found}")
