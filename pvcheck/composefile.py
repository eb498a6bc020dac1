"""The compose subset pvcheck deploys, read and converted to docker-py's service arguments.

Pure: no engine calls. Every value is converted once, when the file is read, so that a bad
one is reported with the file and the key (`services.app.deploy.resources.limits.memory`)
before anything is created on the host. Keys outside the subset are refused the same way,
never silently dropped.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, cast

import docker.types
import yaml

from pvcheck.errors import ConfigError

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
_RESTART_KEYS = {"condition", "delay", "max_attempts", "window"}
_PLACEMENT_KEYS = {"constraints", "preferences", "max_replicas_per_node"}
_RESOURCE_KEYS = {"cpus", "memory"}

_MODES: tuple[Literal["replicated", "global"], ...] = ("replicated", "global")
_FAILURE_ACTIONS: tuple[Literal["pause", "continue", "rollback"], ...] = (
    "pause",
    "continue",
    "rollback",
)
_ORDERS: tuple[Literal["start-first", "stop-first"], ...] = ("start-first", "stop-first")
_PROTOCOLS = ("tcp", "udp")
_PUBLISH_MODES = ("ingress", "host")
_RESTART_CONDITIONS = ("none", "on-failure", "any")
_S = TypeVar("_S", bound=str)

_TOP_KEYS = {"version", "services", "networks", "volumes"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.I)


@dataclass(frozen=True)
class _At:
    """Where a value sits in a compose file, for error messages."""

    source: str
    key: str

    def __truediv__(self, key: str) -> _At:
        return _At(self.source, f"{self.key}.{key}")

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(self.source, self.key, message)


@dataclass(frozen=True)
class Mount:
    source: str  # a path on the host (bind) or the compose name of a volume
    target: str
    read_only: bool

    @property
    def bind(self) -> bool:
        return self.source.startswith("/")


@dataclass(frozen=True)
class Service:
    """One compose service, every value checked and converted for APIClient.create_service."""

    image: str
    mode: docker.types.ServiceMode
    networks: list[str]  # compose names; the deployer maps them to swarm names
    entrypoint: list[str] | None = None
    args: list[str] | None = None  # compose's `command`
    env: dict[str, str] = field(default_factory=dict)
    container_labels: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # deploy.labels, on the service
    mounts: list[Mount] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    hostname: str | None = None
    stop_signal: str | None = None
    stop_grace_period_ns: int | None = None
    update_config: docker.types.UpdateConfig | None = None
    restart_policy: docker.types.RestartPolicy | None = None
    placement: docker.types.Placement | None = None
    resources: docker.types.Resources | None = None


@dataclass(frozen=True)
class Network:
    external: bool = False
    name: str | None = None  # an external network's own name, when it differs


@dataclass
class StackSpec:
    """A parsed compose file: its services and the networks/volumes it declares."""

    source: str
    services: dict[str, Service]
    networks: dict[str, Network] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)


def load_stack(path: Path) -> StackSpec:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "", f"cannot read compose file: {exc}") from None
    return parse_stack(doc, str(path))


def parse_stack(doc: Any, source: str) -> StackSpec:
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ConfigError(source, "services", "a compose file needs a services mapping")
    for key in doc:
        if key not in _TOP_KEYS and not str(key).startswith("x-"):
            _At(source, str(key)).fail("not supported")
    networks = {
        str(name): _network(decl, _At(source, f"networks.{name}"))
        for name, decl in _mapping(doc.get("networks"), _At(source, "networks"), None).items()
    }
    volumes = []
    for name, decl in _mapping(doc.get("volumes"), _At(source, "volumes"), None).items():
        _mapping(decl, _At(source, f"volumes.{name}"), set())  # a plain named volume only
        volumes.append(str(name))
    services = {}
    for name, svc in doc["services"].items():
        at = _At(source, f"services.{name}")
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            at.fail("a service name is letters, digits and . _ + - (at most 128)")
        if not isinstance(svc, dict) or not isinstance(svc.get("image"), str) or not svc["image"]:
            (at / "image").fail("every service needs an image (a name)")
        _known(svc, _SERVICE_KEYS, at)
        services[name] = _service(svc, at)
    return StackSpec(source, services, networks, volumes)


def _network(decl: Any, at: _At) -> Network:
    fields = _mapping(decl, at, {"external", "name"})
    external = fields.get("external", False)
    if not isinstance(external, bool):
        (at / "external").fail("must be true or false")
    name = fields.get("name")
    if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
        (at / "name").fail("must be a network name")
    if name is not None and not external:
        (at / "name").fail("is supported only for an external network")
    return Network(external, name)


def _service(svc: dict[str, Any], at: _At) -> Service:
    deploy = _mapping(svc.get("deploy"), at / "deploy", _DEPLOY_KEYS)
    mode = _choice(deploy.get("mode", "replicated"), at / "deploy" / "mode", _MODES)
    if mode == "global" and "replicas" in deploy:
        (at / "deploy" / "replicas").fail("a global service has no replica count")
    replicas = _int(deploy.get("replicas", 1), at / "deploy" / "replicas")
    grace = svc.get("stop_grace_period")
    return Service(
        image=svc["image"],
        mode=docker.types.ServiceMode(mode, replicas=None if mode == "global" else replicas),
        networks=_networks(svc.get("networks"), at / "networks"),
        entrypoint=_argv(svc.get("entrypoint"), at / "entrypoint"),
        args=_argv(svc.get("command"), at / "command"),
        env=_pairs(svc.get("environment"), at / "environment"),
        container_labels=_pairs(svc.get("labels"), at / "labels"),
        labels=_pairs(deploy.get("labels"), at / "deploy" / "labels"),
        mounts=_mounts(svc.get("volumes"), at / "volumes"),
        ports=_ports(svc.get("ports") or [], at / "ports"),
        hostname=_word(svc.get("hostname"), at / "hostname"),
        stop_signal=_word(svc.get("stop_signal"), at / "stop_signal"),
        stop_grace_period_ns=None
        if grace is None
        else _duration_ns(grace, at / "stop_grace_period"),
        update_config=_update_config(deploy.get("update_config"), at / "deploy" / "update_config"),
        restart_policy=_restart_policy(
            deploy.get("restart_policy"), at / "deploy" / "restart_policy"
        ),
        placement=_placement(deploy.get("placement"), at / "deploy" / "placement"),
        resources=_resources(deploy.get("resources"), at / "deploy" / "resources"),
    )


# --- value converters: each names the key it was given when the value is wrong -----------
def _known(value: Mapping[str, Any], keys: set[str], at: _At) -> None:
    unknown = {str(key) for key in value} - keys
    if unknown:
        (at / sorted(unknown)[0]).fail("not supported")


def _mapping(value: Any, at: _At, keys: set[str] | None) -> dict[str, Any]:
    """A mapping (None reads as empty) with only `keys`, or any key when `keys` is None."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        at.fail("must be a mapping")
    if keys is not None:
        _known(value, keys, at)
    return value


def _choice(value: Any, at: _At, choices: tuple[_S, ...]) -> _S:
    for choice in choices:
        if value == choice:
            return choice
    at.fail(f"must be one of {', '.join(choices)}")


def _int(value: Any, at: _At, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        at.fail(f"must be a whole number >= {minimum}")
    return value


def _duration_ns(value: Any, at: _At) -> int:
    """A Go-style duration (`1m30s`, `500ms`) or a bare number of seconds, in nanoseconds."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return int(float(text) * 1e9)
    if not text or _DURATION_PART.sub("", text):
        at.fail(f"bad duration {value!r} (examples: 10s, 1m30s, 500ms)")
    return int(sum(float(n) * _NS[unit] for n, unit in _DURATION_PART.findall(text)))


def _memory_bytes(value: Any, at: _At) -> int:
    """`512M`, `1.5g`, `100kb` or a number of bytes, as docker reads memory sizes (1024-based)."""
    match = _MEMORY.fullmatch(str(value).strip())
    if isinstance(value, bool) or not match:
        at.fail(f"bad memory size {value!r} (examples: 64M, 1.5G)")
    scale = 1024 ** " kmgt".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * scale)


def _nano_cpus(value: Any, at: _At) -> int:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        at.fail(f"bad cpu count {value!r} (example: '0.5')")
    if not 0 < cpus <= 1024:
        at.fail(f"bad cpu count {value!r} (example: '0.5')")
    return int(cpus * 1e9)


def _update_config(value: Any, at: _At) -> docker.types.UpdateConfig | None:
    """swarm's own defaults for what the file leaves out, as `docker stack deploy` does."""
    update = _mapping(value, at, _UPDATE_KEYS)
    if not update:
        return None
    ratio = update.get("max_failure_ratio")
    if ratio is not None and not (isinstance(ratio, int | float) and 0 <= ratio <= 1):
        (at / "max_failure_ratio").fail("must be a number from 0 to 1")
    return docker.types.UpdateConfig(
        parallelism=_int(update.get("parallelism", 1), at / "parallelism"),
        delay=_duration_ns(update["delay"], at / "delay") if "delay" in update else None,
        failure_action=_choice(
            update.get("failure_action", "pause"), at / "failure_action", _FAILURE_ACTIONS
        ),
        monitor=_duration_ns(update["monitor"], at / "monitor") if "monitor" in update else None,
        max_failure_ratio=float(ratio) if ratio is not None else None,
        order=_choice(update["order"], at / "order", _ORDERS) if "order" in update else None,
    )


def _restart_policy(value: Any, at: _At) -> docker.types.RestartPolicy | None:
    """Only the keys the file sets: swarm fills in the rest (condition any, delay 5s), like
    `docker stack deploy` (docker-py's RestartPolicy would send condition none instead)."""
    policy = _mapping(value, at, _RESTART_KEYS)
    if not policy:
        return None
    out: dict[str, Any] = {}
    if "condition" in policy:
        out["Condition"] = _choice(policy["condition"], at / "condition", _RESTART_CONDITIONS)
    if "delay" in policy:
        out["Delay"] = _duration_ns(policy["delay"], at / "delay")
    if "max_attempts" in policy:
        out["MaxAttempts"] = _int(policy["max_attempts"], at / "max_attempts")
    if "window" in policy:
        out["Window"] = _duration_ns(policy["window"], at / "window")
    # The engine reads the same keys from a plain mapping; TaskTemplate stores it as given.
    return cast(docker.types.RestartPolicy, out)


def _placement(value: Any, at: _At) -> docker.types.Placement | None:
    placement = _mapping(value, at, _PLACEMENT_KEYS)
    if not placement:
        return None
    constraints = placement.get("constraints", [])
    if not isinstance(constraints, list) or not all(
        isinstance(c, str) and re.fullmatch(r"\S+\s*(==|!=)\s*\S+", c) for c in constraints
    ):
        (at / "constraints").fail("must be a list like ['node.role == manager']")
    preferences = []
    for i, pref in enumerate(placement.get("preferences", [])):
        if (
            not isinstance(pref, dict)
            or set(pref) != {"spread"}
            or not isinstance(pref["spread"], str)
        ):
            (at / f"preferences[{i}]").fail("must be {spread: <node label or attribute>}")
        preferences.append(docker.types.PlacementPreference("spread", pref["spread"]))
    most = placement.get("max_replicas_per_node")
    return docker.types.Placement(
        constraints=constraints or None,
        preferences=preferences or None,
        maxreplicas=None if most is None else _int(most, at / "max_replicas_per_node", 1),
    )


def _resources(value: Any, at: _At) -> docker.types.Resources | None:
    resources = _mapping(value, at, {"limits", "reservations"})
    if not resources:
        return None
    limits = _mapping(resources.get("limits"), at / "limits", _RESOURCE_KEYS)
    wants = _mapping(resources.get("reservations"), at / "reservations", _RESOURCE_KEYS)

    def cpus(part: dict[str, Any], where: _At) -> int | None:
        return _nano_cpus(part["cpus"], where / "cpus") if "cpus" in part else None

    def memory(part: dict[str, Any], where: _At) -> int | None:
        return _memory_bytes(part["memory"], where / "memory") if "memory" in part else None

    return docker.types.Resources(
        cpu_limit=cpus(limits, at / "limits"),
        mem_limit=memory(limits, at / "limits"),
        cpu_reservation=cpus(wants, at / "reservations"),
        mem_reservation=memory(wants, at / "reservations"),
    )


def _ports(spec: Any, at: _At) -> list[dict[str, Any]]:
    """Compose ports (long or short syntax) as the engine's PortConfig list.

    A long-syntax port without `published` lets the swarm pick one (30000-32767).
    """
    if not isinstance(spec, list):
        at.fail("must be a list")
    out: list[dict[str, Any]] = []
    for i, port in enumerate(spec):
        where = _At(at.source, f"{at.key}[{i}]")
        if isinstance(port, dict):
            _known(port, {"target", "published", "protocol", "mode"}, where)
            entry: dict[str, Any] = {
                "Protocol": _choice(
                    port.get("protocol", "tcp"), where / "protocol", ("tcp", "udp")
                ),
                "TargetPort": _port_number(port.get("target"), where / "target"),
                "PublishMode": _choice(
                    port.get("mode", "ingress"), where / "mode", ("ingress", "host")
                ),
            }
            if port.get("published") is not None:
                entry["PublishedPort"] = _port_number(port["published"], where / "published")
        else:
            # "published:target[/protocol]", or "target[/protocol]" for a swarm-chosen port.
            ports, _, protocol = str(port).partition("/")
            published, colon, target = ports.rpartition(":")
            entry = {
                "Protocol": _choice(protocol or "tcp", where, _PROTOCOLS),
                "TargetPort": _port_number(target, where),
                "PublishMode": "ingress",
            }
            if colon:
                entry["PublishedPort"] = _port_number(published, where)
        out.append(entry)
    return out


def _port_number(value: Any, at: _At) -> int:
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 65536:
        at.fail(f"bad port {value!r}")
    return int(text)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _pairs(value: Any, at: _At) -> dict[str, str]:
    """Compose's mapping or `KEY=value` list form of environment and labels, as a dict."""
    if value is None:
        return {}
    if isinstance(value, dict) and all(v is None or _scalar(v) for v in value.values()):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return dict((item.partition("=")[0], item.partition("=")[2]) for item in value)
    at.fail("must be a mapping of plain values or a list of KEY=value strings")


def _argv(value: Any, at: _At) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            at.fail(f"cannot split into words: {exc}")
    if isinstance(value, list) and all(_scalar(v) for v in value):
        return [str(v) for v in value]
    at.fail("must be a string or a list of words")


def _word(value: Any, at: _At) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        at.fail(f"bad value {value!r}")
    return value


def _networks(value: Any, at: _At) -> list[str]:
    """A list of names, or a mapping of names (per-network options are not supported)."""
    if value is None:
        return ["default"]
    if isinstance(value, dict):
        for name, options in value.items():
            _mapping(options, at / str(name), set())
        value = list(value)
    if not isinstance(value, list) or not value:
        at.fail("must be a list of network names")
    for name in value:
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            at.fail(f"bad network name {name!r}")
    return list(value)


def _mounts(value: Any, at: _At) -> list[Mount]:
    """Short syntax only: `volume:/path`, `/host/path:/path`, each optionally `:ro` or `:rw`."""
    if value is None:
        return []
    if not isinstance(value, list):
        at.fail("must be a list")
    mounts = []
    for i, item in enumerate(value):
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) not in (2, 3) or not all(parts[:2]) or parts[2:] not in ([], ["ro"], ["rw"]):
            _At(at.source, f"{at.key}[{i}]").fail("must be source:/target[:ro|rw]")
        mounts.append(Mount(parts[0], parts[1], parts[2:] == ["ro"]))
    return mounts


# --- the service as docker-py arguments --------------------------------------------------
def service_kwargs(
    full: str,
    svc: Service,
    image: str,
    nets: dict[str, str],
    vols: dict[str, str],
    base: dict[str, str],
) -> dict[str, Any]:
    """Keyword arguments for APIClient.create_service/update_service: `image` pinned by the
    deployer, `nets`/`vols` the swarm names of the compose ones, `base` the run's labels."""
    mounts = [
        docker.types.Mount(
            m.target,
            m.source if m.bind else vols.get(m.source, m.source),
            type="bind" if m.bind else "volume",
            read_only=m.read_only,
        )
        for m in svc.mounts
    ]
    # Swarm's ContainerSpec calls the entrypoint "command" and compose's command "args".
    container = docker.types.ContainerSpec(
        image,
        env=[f"{k}={v}" for k, v in svc.env.items()],
        labels={**svc.container_labels, **base},
        mounts=mounts or None,
        stop_grace_period=svc.stop_grace_period_ns,
        stop_signal=svc.stop_signal,
        hostname=svc.hostname,
        command=svc.entrypoint,
        args=svc.args,
    )
    return {
        "task_template": docker.types.TaskTemplate(
            container,
            networks=[nets[n] for n in svc.networks],
            restart_policy=svc.restart_policy,
            placement=svc.placement,
            resources=svc.resources,
        ),
        "name": full,
        "labels": {**svc.labels, **base},
        "mode": svc.mode,
        "endpoint_spec": docker.types.EndpointSpec(ports=svc.ports),
        "update_config": svc.update_config,
    }
