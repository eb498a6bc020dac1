"""Stacks on the engine: their convergence, and label-scoped listing and removal.

Stacks are deployed and removed with the docker CLI (pvcheck.stackcli); what is read here
goes through the swarm seam, and removal by label is the sweep behind every teardown.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import docker.errors

from pvcheck.seams import StackTool, SwarmApi
from pvcheck.swarm import LABEL_STACK, POLL_S, Swarm

log = logging.getLogger(__name__)


def local_image_ref(swarm: Swarm, image: str) -> str:
    """A local-only image (no registry digest) by its ID, so the engine never tries a pull."""
    try:
        found = swarm.call(swarm.api.inspect_image, image)
    except docker.errors.ImageNotFound:
        return image
    return image if found.get("RepoDigests") else str(found["Id"])


def wait_running(
    swarm: SwarmApi, stack: str, timeout_s: float, poll_s: float = POLL_S
) -> dict[str, ServiceState]:
    """Poll until every service of the stack runs its current spec (an update included)
    with all its replicas, or swarm gave up on the update, or the deadline; the states."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = stack_task_states(swarm, stack)
        if converged(states) or any(s.gave_up for s in states.values()):
            return states
        if time.monotonic() >= deadline:
            return states
        time.sleep(poll_s)


# Update states in which a service has not (yet) settled on its current spec, and those of
# them in which swarm gave up on the update.
UPDATE_UNSETTLED = {
    "updating",
    "paused",
    "rollback_started",
    "rollback_paused",
    "rollback_completed",
}
UPDATE_GAVE_UP = {"paused", "rollback_paused", "rollback_completed"}


@dataclass(frozen=True)
class ServiceState:
    """How far a service is from running its current spec with every replica."""

    running: int  # tasks running the service's current container spec
    desired: int
    update: str | None = None  # swarm's UpdateStatus.State
    # A replicated service deliberately scaled to 0 is settled with nothing running; any
    # other service desiring no task (a global one no node may run) is not.
    scaled_to_zero: bool = False

    @property
    def running_current(self) -> bool:
        if self.update in UPDATE_UNSETTLED:
            return False
        return self.running >= self.desired > 0 or (self.scaled_to_zero and self.running == 0)

    @property
    def gave_up(self) -> bool:
        return self.update in UPDATE_GAVE_UP

    def __str__(self) -> str:
        if self.update in UPDATE_UNSETTLED:
            return f"update {self.update}"
        if self.running_current:
            return "running"
        return f"{self.running}/{self.desired} running the current spec"


def converged(states: dict[str, ServiceState]) -> bool:
    """A stack is converged when it has services and each runs its current spec in full."""
    return bool(states) and all(s.running_current for s in states.values())


def stack_task_states(swarm: SwarmApi, stack: str) -> dict[str, ServiceState]:
    """Per service of a stack, by name. Right after an update call the engine may still show
    the old tasks running and the previous update status; counting only tasks with the
    current container spec keeps that moment from passing as converged."""
    services = swarm.services({LABEL_STACK: stack})
    tasks = swarm.tasks([s["ID"] for s in services]) if services else []
    out = {}
    for svc in services:
        current = svc["Spec"]["TaskTemplate"].get("ContainerSpec")
        running = sum(
            1
            for t in tasks
            if t.get("ServiceID") == svc["ID"]
            and t.get("DesiredState") == "running"
            and (t.get("Status") or {}).get("State") == "running"
            and (t.get("Spec") or {}).get("ContainerSpec") == current
        )
        replicated = (svc["Spec"].get("Mode") or {}).get("Replicated")
        out[svc["Spec"]["Name"]] = ServiceState(
            running,
            (svc.get("ServiceStatus") or {}).get("DesiredTasks", 0),
            (svc.get("UpdateStatus") or {}).get("State"),
            scaled_to_zero=replicated is not None and replicated.get("Replicas") == 0,
        )
    return out


def list_residue(swarm: SwarmApi, *labels: str) -> dict[str, list[str]]:
    """Names of every object carrying all `labels` (each key or key=value), by kind."""
    wanted = list(labels)
    return {
        "services": [s["Spec"]["Name"] for s in swarm.services(_label_dict(wanted))],
        "containers": [c["Names"][0].lstrip("/") for c in swarm.containers(wanted)],
        "networks": [n["Name"] for n in swarm.networks(wanted)],
        "volumes": [v["Name"] for v in swarm.volumes(wanted)],
        "configs": [c["Spec"]["Name"] for c in swarm.configs(wanted)],
        "secrets": [s["Spec"]["Name"] for s in swarm.secrets(wanted)],
    }


def stack_objects(swarm: SwarmApi) -> dict[str, list[str]]:
    """Every object carrying a stack label, by that stack: `{"s": ["service s_app"]}`."""
    kinds: list[tuple[str, list[dict[str, Any]], str]] = [
        ("service", swarm.services({LABEL_STACK: ""}), "Spec"),
        ("container", swarm.containers(LABEL_STACK), ""),
        ("network", swarm.networks(LABEL_STACK), ""),
        ("volume", swarm.volumes(LABEL_STACK), ""),
        ("config", swarm.configs(LABEL_STACK), "Spec"),
        ("secret", swarm.secrets(LABEL_STACK), "Spec"),
    ]
    out: dict[str, list[str]] = {}
    for kind, objects, inner in kinds:
        for obj in objects:
            where = obj.get(inner, {}) if inner else obj
            stack = (where.get("Labels") or {}).get(LABEL_STACK)
            names = obj.get("Names") or [where.get("Name") or obj.get("Name") or "?"]
            if isinstance(stack, str):
                out.setdefault(stack, []).append(f"{kind} {str(names[0]).lstrip('/')}")
    return out


def residue_names(left: dict[str, list[str]]) -> list[str]:
    """`{"services": ["a"]}` -> `["service a"]`: what a residue listing names, flat."""
    return [f"{kind[:-1]} {name}" for kind, items in left.items() for name in items]


def _label_dict(labels: list[str]) -> dict[str, str]:
    return dict(label.partition("=")[::2] for label in labels)


def remove_services_gently(
    swarm: SwarmApi, services: list[dict[str, Any]], timeout_s: float
) -> list[str]:
    """Remove services, then wait until the engine has dropped every one of their tasks
    before anything removes their networks. A task that ends after its network is gone is
    never deallocated: one address lost per task (moby/moby#37338; docker/cli#7304 waits the
    same way). Returns the services whose tasks were still there at the deadline."""
    names = {str(s["ID"]): str(s["Spec"]["Name"]) for s in services}
    for sid, name in names.items():
        log.info("docker service rm %s", name)
        swarm.remove_service(sid)
    deadline = time.monotonic() + timeout_s
    while names:
        # Every task, filtered here: the engine answers 404 to a filter on a removed service.
        left = {str(t.get("ServiceID")) for t in swarm.tasks()} & set(names)
        if not left or time.monotonic() >= deadline:
            return sorted(names[i] for i in left)
        time.sleep(POLL_S)
    return []


def remove_stack_gently(
    swarm: SwarmApi, stacks: StackTool, stack: str, timeout_s: float
) -> list[str]:
    """`docker stack rm` in the order that leaks nothing: the stack's services first, their
    tasks waited for, then the rest of the stack (networks, configs, secrets)."""
    slow = remove_services_gently(swarm, swarm.services({LABEL_STACK: stack}), timeout_s)
    stacks.stack_rm([stack])
    return slow


def remove_labelled(swarm: SwarmApi, *labels: str, timeout_s: float = 90.0) -> dict[str, list[str]]:
    """Remove everything carrying all `labels`, services first; returns what is left at the
    deadline.

    Only objects the engine returns for the label filter are touched, whatever their names.
    Networks are removed only once the services' tasks are gone, and this polls.
    """
    if not labels:
        raise ValueError("remove_labelled needs at least one label")
    wanted = list(labels)
    deadline = time.monotonic() + timeout_s
    # Services first and their tasks gone before a network is touched: nothing leaks.
    remove_services_gently(swarm, swarm.services(_label_dict(wanted)), timeout_s)
    for cfg in swarm.configs(wanted):
        swarm.remove_config(cfg["ID"])
    for sec in swarm.secrets(wanted):
        swarm.remove_secret(sec["ID"])
    removed: set[str] = set()
    while True:
        for ctr in swarm.containers(wanted):
            # Exited task containers of removed services linger; running ones are stopping.
            if ctr.get("State") != "running":
                swarm.remove_container(ctr["Id"])
        for net in swarm.networks(wanted):
            # A removed network can still be listed for a moment: said once.
            if swarm.remove_network(net["Id"]) and net["Name"] not in removed:
                removed.add(net["Name"])
                log.info("docker network rm %s", net["Name"])
        for vol in swarm.volumes(wanted):
            swarm.remove_volume(vol["Name"])
        left = list_residue(swarm, *labels)
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)
