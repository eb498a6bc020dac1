"""Stacks from compose files, deployed with docker-py, and label-scoped removal.

pvcheck deploys stacks itself (instead of shelling out to `docker stack deploy`) so that
every object it creates carries its label and the same code works over ssh. It supports the
compose subset recipes and the lab use; anything else is refused with the file and key named.
Objects get com.docker.stack.namespace, so `docker stack ls/ps/rm` see them as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
import yaml

from pvcheck.errors import ConfigError
from pvcheck.swarm import LABEL_STACK, POLL_S, Swarm

log = logging.getLogger(__name__)

_SERVICE_KEYS = {
    "image",
    "command",
    "entrypoint",
    "environment",
    "networks",
    "ports",
    "deploy",
    "volumes",
    "stop_grace_period",
    "stop_signal",
    "labels",
    "hostname",
}
_DEPLOY_KEYS = {
    "labels",
    "replicas",
    "mode",
    "restart_policy",
    "placement",
    "resources",
    "update_config",
}
_UPDATE_KEYS = {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
_UPDATE_CHOICES = {
    "failure_action": ("pause", "continue", "rollback"),
    "order": ("start-first", "stop-first"),
}
LABEL_SPEC = "pvcheck.spec"  # hash of what was deployed, so a re-deploy of the same is a no-op
RESIDUE_KINDS = ("services", "containers", "networks", "volumes", "configs", "secrets")


@dataclass
class StackSpec:
    """A parsed compose file: its services and the networks/volumes it declares."""

    source: str
    services: dict[str, dict[str, Any]]
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_stack(path: Path) -> StackSpec:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "", f"cannot read compose file: {exc}") from None
    return parse_stack(doc, str(path))


def parse_stack(doc: Any, source: str) -> StackSpec:
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ConfigError(source, "services", "a compose file needs a services mapping")
    for name, svc in doc["services"].items():
        if not isinstance(svc, dict) or "image" not in svc:
            raise ConfigError(source, f"services.{name}.image", "every service needs an image")
        unknown = set(svc) - _SERVICE_KEYS
        if unknown:
            raise ConfigError(source, f"services.{name}.{sorted(unknown)[0]}", "not supported")
        unknown = set(svc.get("deploy") or {}) - _DEPLOY_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(source, f"services.{name}.deploy.{key}", "not supported")
        update = (svc.get("deploy") or {}).get("update_config") or {}
        unknown = set(update) - _UPDATE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(
                source, f"services.{name}.deploy.update_config.{key}", "not supported"
            )
        for key, choices in _UPDATE_CHOICES.items():
            if key in update and update[key] not in choices:
                raise ConfigError(
                    source,
                    f"services.{name}.deploy.update_config.{key}",
                    f"must be one of {', '.join(choices)}",
                )
    return StackSpec(
        source=source,
        services=doc["services"],
        networks={k: v or {} for k, v in (doc.get("networks") or {}).items()},
        volumes={k: v or {} for k, v in (doc.get("volumes") or {}).items()},
    )


def _as_dict(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value or []:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def _seconds_ns(value: Any) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value).strip())
    if not match:
        raise ValueError(f"bad duration {value!r}")
    scale = {"ms": 1e6, "s": 1e9, "m": 60e9, None: 1e9}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _update_config(value: Any) -> docker.types.UpdateConfig | None:
    """compose's deploy.update_config (keys checked by parse_stack); swarm's own defaults
    for what it leaves out, as `docker stack deploy` does."""
    if not value:
        return None
    ratio = value.get("max_failure_ratio")
    return docker.types.UpdateConfig(
        parallelism=int(value.get("parallelism", 1)),
        delay=_seconds_ns(value["delay"]) if "delay" in value else None,
        failure_action=value.get("failure_action", "pause"),
        monitor=_seconds_ns(value["monitor"]) if "monitor" in value else None,
        max_failure_ratio=float(ratio) if ratio is not None else None,
        order=value.get("order"),
    )


def _argv(value: Any) -> list[str] | None:
    if not value:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _ports(spec: list[Any]) -> list[dict[str, Any]]:
    """Compose ports (long or short syntax) as the engine's PortConfig list.

    A long-syntax port without `published` lets the swarm pick one (30000-32767).
    """
    out: list[dict[str, Any]] = []
    for port in spec:
        if isinstance(port, dict):
            entry = {
                "Protocol": str(port.get("protocol", "tcp")),
                "TargetPort": int(port["target"]),
                "PublishMode": str(port.get("mode", "ingress")),
            }
            if port.get("published") is not None:
                entry["PublishedPort"] = int(port["published"])
        else:
            published, _, target = str(port).partition(":")
            entry = {
                "Protocol": "tcp",
                "TargetPort": int(target or published),
                "PublishedPort": int(published),
                "PublishMode": "ingress",
            }
        out.append(entry)
    return out


def local_image_ref(swarm: Swarm, image: str) -> str:
    """A local-only image (no registry digest) by its ID, so the engine never tries a pull."""
    try:
        found = swarm.call(swarm.api.inspect_image, image)
    except docker.errors.ImageNotFound:
        return image
    return image if found.get("RepoDigests") else str(found["Id"])


class StackDeployer:
    """Deploys and removes stacks; every object carries `labels` (the run or lab label)."""

    def __init__(self, swarm: Swarm, labels: dict[str, str]) -> None:
        self.swarm = swarm
        self.labels = labels
        self._pins: dict[str, str] = {}

    def deploy(self, stack: str, spec: StackSpec) -> list[str]:
        """Create or update the stack's services; returns their full names."""
        base = {LABEL_STACK: stack, **self.labels}
        nets = self._ensure_networks(stack, spec, base)
        vols = self._ensure_volumes(stack, spec, base)
        existing = {s["Spec"]["Name"]: s for s in self.swarm.services({LABEL_STACK: stack})}
        names = []
        for name, svc in spec.services.items():
            full = f"{stack}_{name}"
            names.append(full)
            image = self._pinned(svc["image"])
            service_spec = self._service_spec(full, svc, image, nets, vols, base)
            digest = hashlib.sha256(
                json.dumps(service_spec, sort_keys=True, default=str).encode()
            ).hexdigest()[:16]
            service_spec["labels"][LABEL_SPEC] = digest
            current = existing.get(full)
            if current is None:
                log.info("docker service create --name %s %s", full, svc["image"])
                self.swarm.call(self.swarm.api.create_service, **service_spec)
            elif current["Spec"].get("Labels", {}).get(LABEL_SPEC) != digest:
                # The whole spec is sent (no merge with the current one), like stack deploy.
                log.info("docker service update %s (image %s)", full, svc["image"])
                self.swarm.call(
                    self.swarm.api.update_service,
                    current["ID"],
                    current["Version"]["Index"],
                    fetch_current_spec=False,
                    **service_spec,
                )
        return names

    def _ensure_networks(self, stack: str, spec: StackSpec, base: dict[str, str]) -> dict[str, str]:
        names: dict[str, str] = {}
        wanted = {n for svc in spec.services.values() for n in (svc.get("networks") or ["default"])}
        for net in sorted(wanted):
            decl = spec.networks.get(net, {})
            if decl.get("external"):
                names[net] = str(decl.get("name", net))
                continue
            full = f"{stack}_{net}"
            names[net] = full
            if not self.swarm.call(self.swarm.api.networks, names=[full]):
                log.info("docker network create -d overlay %s", full)
                self.swarm.call(
                    self.swarm.api.create_network,
                    full,
                    driver="overlay",
                    labels=base,
                    attachable=False,
                    check_duplicate=True,
                )
        return names

    def _ensure_volumes(self, stack: str, spec: StackSpec, base: dict[str, str]) -> dict[str, str]:
        out = {}
        for vol in spec.volumes:
            full = f"{stack}_{vol}"
            out[vol] = full
            self.swarm.call(self.swarm.api.create_volume, full, labels=base)
        return out

    def _service_spec(
        self,
        full: str,
        svc: dict[str, Any],
        image: str,
        nets: dict[str, str],
        vols: dict[str, str],
        base: dict[str, str],
    ) -> dict[str, Any]:
        """Keyword arguments for APIClient.create_service/update_service."""
        deploy = svc.get("deploy") or {}
        # Swarm's ContainerSpec calls the entrypoint "command" and compose's command "args".
        entrypoint, args = (_argv(svc.get(key)) for key in ("entrypoint", "command"))
        mounts = []
        for vol in svc.get("volumes") or []:
            src, _, rest = str(vol).partition(":")
            target, _, mode = rest.partition(":")
            bind = src.startswith("/")
            source = src if bind else vols.get(src, src)
            mounts.append(
                docker.types.Mount(
                    target, source, type="bind" if bind else "volume", read_only=(mode == "ro")
                )
            )
        grace = svc.get("stop_grace_period")
        container = docker.types.ContainerSpec(
            image,
            env=[f"{k}={v}" for k, v in _as_dict(svc.get("environment")).items()],
            labels={**_as_dict(svc.get("labels")), **base},
            mounts=mounts or None,
            stop_grace_period=_seconds_ns(grace) if grace is not None else None,
            stop_signal=str(svc["stop_signal"]) if svc.get("stop_signal") else None,
            hostname=str(svc["hostname"]) if svc.get("hostname") else None,
            command=entrypoint,
            args=args,
        )
        networks = [nets[n] for n in (svc.get("networks") or ["default"])]
        global_mode = deploy.get("mode") == "global"
        return {
            "task_template": docker.types.TaskTemplate(container, networks=networks),
            "name": full,
            "labels": {**_as_dict(deploy.get("labels")), **base},
            "mode": docker.types.ServiceMode(
                "global" if global_mode else "replicated",
                replicas=None if global_mode else int(deploy.get("replicas", 1)),
            ),
            "endpoint_spec": docker.types.EndpointSpec(ports=_ports(svc.get("ports") or [])),
            "update_config": _update_config(deploy.get("update_config")),
        }

    def _pinned(self, image: str) -> str:
        if image not in self._pins:
            self._pins[image] = local_image_ref(self.swarm, image)
        return self._pins[image]

    # --- convergence and removal -----------------------------------------------------------
    def wait_running(self, stack: str, timeout_s: float, poll_s: float = POLL_S) -> dict[str, str]:
        """Poll until every service of the stack runs its current spec (an update included)
        with all its replicas; returns the states."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = stack_task_states(self.swarm, stack)
            if states and all(v == "running" for v in states.values()):
                return states
            if any(v in UPDATE_FAILED for v in states.values()):
                return states  # swarm gave up on the update: waiting longer changes nothing
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
UPDATE_FAILED = {f"update {s}" for s in ("paused", "rollback_paused", "rollback_completed")}


def stack_task_states(swarm: Swarm, stack: str) -> dict[str, str]:
    """Per service of a stack: 'running' when its desired replicas run the service's current
    spec and no update is in flight, else a summary. Right after an update call the engine
    may still show the old tasks running and the previous update status; counting only tasks
    with the current container spec keeps that moment from passing as converged."""
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
        desired = (svc.get("ServiceStatus") or {}).get("DesiredTasks", 0)
        update = (svc.get("UpdateStatus") or {}).get("State")
        name = svc["Spec"]["Name"]
        if update in UPDATE_UNSETTLED:
            out[name] = f"update {update}"
        elif desired and running >= desired:
            out[name] = "running"
        else:
            out[name] = f"{running}/{desired} running the current spec"
    return out


def list_residue(swarm: Swarm, *labels: str) -> dict[str, list[str]]:
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


def residue_names(left: dict[str, list[str]]) -> list[str]:
    """`{"services": ["a"]}` -> `["service a"]`: what a residue listing names, flat."""
    return [f"{kind[:-1]} {name}" for kind, items in left.items() for name in items]


def _label_dict(labels: list[str]) -> dict[str, str]:
    return dict(label.partition("=")[::2] for label in labels)


def remove_labelled(swarm: Swarm, *labels: str, timeout_s: float = 90.0) -> dict[str, list[str]]:
    """Remove everything carrying all `labels`, services first; returns what is left at the
    deadline.

    Only objects the engine returns for the label filter are touched, whatever their names.
    Networks are removable only once their task containers are gone, so this polls.
    """
    if not labels:
        raise ValueError("remove_labelled needs at least one label")
    wanted = list(labels)
    deadline = time.monotonic() + timeout_s
    for svc in swarm.services(_label_dict(wanted)):
        log.info("docker service rm %s", svc["Spec"]["Name"])
        swarm.remove_service(svc["ID"])
    for cfg in swarm.configs(wanted):
        swarm.remove_config(cfg["ID"])
    for sec in swarm.secrets(wanted):
        swarm.remove_secret(sec["ID"])
    while True:
        for ctr in swarm.containers(wanted):
            # Exited task containers of removed services linger; running ones are stopping.
            if ctr.get("State") != "running":
                swarm.remove_container(ctr["Id"])
        for net in swarm.networks(wanted):
            if swarm.remove_network(net["Id"]):
                log.info("docker network rm %s", net["Name"])
        for vol in swarm.volumes(wanted):
            swarm.remove_volume(vol["Name"])
        left = list_residue(swarm, *labels)
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)
