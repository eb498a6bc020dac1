"""Teardown: remove everything carrying this run's label, and only that."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import judge
from pvcheck.records import Check
from pvcheck.stacks import remove_labelled
from pvcheck.swarm import LABEL_RUN, Swarm


@task(name="teardown", cache_policy=NO_CACHE)
def teardown(swarm: Swarm, run_id: str, timeout_s: float = 120.0) -> Check:
    log = get_run_logger()
    label = f"{LABEL_RUN}={run_id}"
    log.info(
        "docker service rm $(docker service ls -q --filter label=%s)  (+ networks, volumes, "
        "configs, secrets, containers with that label)",
        label,
    )
    left = remove_labelled(swarm, label, timeout_s=timeout_s)
    check = judge.residue(left, label)
    log.info("residue with label %s: %s", label, check.found)
    return check
