"""What a recipe may reach: the allow-list of compose keys it may use, the objects, ports and
networks it may touch, its files read inside its folder without following links, and
environment entries filled from the app's env rather than pvcheck's."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from pvcheck.compose.common import DECLARED, DOC, copy_tree, declared_objects, is_external, to_int
from pvcheck.errors import ConfigError
from pvcheck.safeio import writable_by_others

MAX_RECIPE_FILE = 1024 * 1024
# Service keys that reach past the container: named in their refusal, as the common case.
_HOST_KEYS = (
    "privileged", "cap_add", "devices", "device_cgroup_rules", "sysctls", "ulimits", "pid",
    "ipc", "network_mode", "userns_mode", "security_opt", "cgroup", "cgroup_parent",
    "isolation", "runtime", "gpus", "volumes_from",
)  # fmt: skip

# What a recipe may write, as an allow-list (pvcheck runs the CLI as root on a shared host):
# the keys Co-op Cloud recipes use, each either any value (None) or a mapping whose own keys
# are checked in turn. `x-` extension keys are inert and allowed anywhere. Anything else,
# known to compose or not, is refused: a key added to compose later must be reviewed first.
_Keys: TypeAlias = Mapping[str, "_Keys | None"]


def _any(*keys: str) -> dict[str, _Keys | None]:
    return dict.fromkeys(keys)


_TOP: _Keys = _any("version", "services", *DECLARED)
_UPDATE: _Keys = _any(
    "parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"
)
_DEPLOY: _Keys = {
    **_any("mode", "replicas", "labels", "endpoint_mode"),
    "restart_policy": _any("condition", "delay", "max_attempts", "window"),
    "update_config": _UPDATE,
    "rollback_config": _UPDATE,
    # No `devices` reservation (GPUs and other host devices).
    "resources": {
        "limits": _any("cpus", "memory", "pids"),
        "reservations": _any("cpus", "memory"),
    },
    "placement": _any("constraints", "preferences", "max_replicas_per_node"),
}
_SERVICE_ANY = (
    "image", "command", "entrypoint", "environment", "env_file", "secrets", "configs",
    "labels", "user", "working_dir", "hostname", "stop_grace_period", "stop_signal", "init",
    "read_only", "tmpfs", "tty", "stdin_open", "cap_drop", "extra_hosts", "depends_on",
    "expose",
)  # fmt: skip
_HEALTHCHECK = (
    "test", "interval", "timeout", "retries", "start_period", "start_interval", "disable",
)  # fmt: skip
_SERVICE: _Keys = {
    **_any(*_SERVICE_ANY),
    # Each checked further by its own rule in confine.
    **_any("volumes", "networks", "ports", "logging"),
    "deploy": _DEPLOY,
    "healthcheck": _any(*_HEALTHCHECK),
}
# Objects the stack declares. No `driver_opts` anywhere: a local volume with `o: bind` mounts
# any host folder (`device: /`), and network options reach the node's interfaces.
_OBJECT_KEYS: dict[str, _Keys] = {
    "volumes": _any("name", "labels", "external", "driver"),
    # No `ipam`: a chosen subnet can collide with the host's or take the overlay pool's range.
    "networks": _any("name", "labels", "external", "driver", "attachable", "internal"),
    # No `environment` (the CLI's own environment: pvcheck's) and no secret drivers.
    "configs": _any("name", "labels", "external", "file", "template_driver"),
    "secrets": _any("name", "labels", "external", "file", "template_driver"),
}
# The only driver a stack-created object may name: the default one, on the node's own disk
# (a volume plugin could mount anything), and overlay (macvlan, ipvlan, host and bridge
# networks sit on the node's own interfaces).
_OBJECT_DRIVER = {"volumes": "local", "networks": "overlay"}
_MOUNT: _Keys = {
    **_any("type", "source", "target", "read_only", "consistency"),
    "volume": _any("nocopy", "subpath"),
    "tmpfs": _any("size", "mode"),
}
# Service keys on one of its networks: an alias only (on the stack's own networks, below).
_ATTACH: _Keys = _any("aliases")
# Logs stay on the node: only the file drivers, with options that size and rotate the file.
# syslog, gelf, fluentd, splunk, awslogs... would send the app's output to an address the
# recipe names; with no driver given, the daemon's default takes these same options.
_LOG_DRIVERS = ("json-file", "local")
_LOGGING: _Keys = {
    "driver": None,
    "options": _any("max-size", "max-file", "compress", "mode", "max-buffer-size"),
}
_PORT: _Keys = _any("target", "published", "protocol", "mode")
# Ports of the host's own services (privileged ports: ssh, the proxy's 80/443; the docker API,
# swarm management, overlay VXLAN and gossip; the Prefect API): never publishable, whatever a
# Confinement lists.
_HOST_SERVICE_PORTS = frozenset({2375, 2376, 2377, 4200, 4789, 7946})


def never_published(port: int) -> bool:
    """Whether `port` belongs to the host's own services (or is no port at all)."""
    return not 1024 <= port <= 65535 or port in _HOST_SERVICE_PORTS


@dataclass(frozen=True)
class Confinement:
    """What one deploy of a recipe may touch: objects named after its stack, the shared
    network, files inside its folder (copied, as read without following links, into
    `files_to`, a private folder the deploy reads them from), and the ingress ports in
    `publish` (none by default: a recipe is reached through the shared proxy)."""

    stack: str
    recipe_dir: Path
    files_to: Path
    shared_network: str
    publish: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        reserved = sorted(port for port in self.publish if never_published(port))
        if reserved:
            raise ValueError(f"ports {reserved} belong to the host's own services")


def confine(doc: Mapping[str, Any], c: Confinement, *, where: str = DOC) -> dict[str, Any]:
    """A copy the recipe cannot use to reach beyond its own stack: only allow-listed keys
    (no host-level service keys, no bind mounts, no driver options, no log shipping, no
    published port the Confinement does not list); an external object must be the app's
    own (named `<stack>_…`, as abra names secrets) or the shared network; a named object
    must carry the stack's prefix (else the CLI would update, label and later remove someone
    else's); files must lie inside the recipe folder and are read without following links."""
    if os.geteuid() == 0:
        # Every recipe file is read by path at some point (the compose file itself first): a
        # folder others could swap between the reads would let them choose what is read.
        why = writable_by_others(c.recipe_dir)
        if why:
            raise _refuse(where, "recipe folder", f"{c.recipe_dir} is {why}")
    out: dict[str, Any] = copy_tree(doc)
    _check_keys(out, _TOP, "", where)
    declared = declared_objects(out, "networks", where)
    shared = {name for name, decl in declared if is_external(decl)}
    volumes = {name for name, _decl in declared_objects(out, "volumes", where)}
    for name, service in declared_objects(out, "services", where):
        _confine_service(service, f"services.{name}", c, shared, volumes, where)
    for section in DECLARED:
        for name, decl in declared_objects(out, section, where):
            _confine_object(section, name, decl, c, where)
    return out


def _refuse(where: str, at: str, problem: str) -> ConfigError:
    return ConfigError(where, at, f"{problem}; refused")


def _check_keys(value: Any, keys: _Keys, at: str, where: str) -> None:
    """Every key of `value` (when a mapping) in `keys`, nested mappings checked likewise. A
    value of another shape is left to the CLI, which refuses it."""
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        name = str(key)
        here = f"{at}.{name}" if at else name
        if name.startswith("x-"):
            continue
        if name not in keys:
            raise _refuse(where, here, "not a key pvcheck lets a recipe use")
        nested = keys[name]
        if nested is not None:
            _check_keys(item, nested, here, where)


def _confine_service(
    service: dict[str, Any],
    at: str,
    c: Confinement,
    shared: set[str],
    volumes: set[str],
    where: str,
) -> None:
    for key in _HOST_KEYS:
        if key in service:
            raise _refuse(where, f"{at}.{key}", "reaches the host")
    _check_keys(service, _SERVICE, at, where)
    _check_mounts(service.get("volumes"), volumes, f"{at}.volumes", where)
    _check_attachments(service.get("networks"), shared, f"{at}.networks", where)
    _check_ports(service.get("ports"), c, f"{at}.ports", where)
    _check_logging(service.get("logging"), f"{at}.logging", where)
    env_files = service.get("env_file")
    if env_files:
        paths = [env_files] if isinstance(env_files, str) else list(env_files)
        service["env_file"] = [
            _copy_in(
                p if isinstance(p, str) else str((p or {}).get("path", "")),
                c,
                f"{at}.env_file",
                where,
            )
            for p in paths
        ]


def _confine_object(
    section: str, name: str, decl: dict[str, Any], c: Confinement, where: str
) -> None:
    at = f"{section}.{name}"
    own = f"{c.stack}_"
    _check_keys(decl, _OBJECT_KEYS[section], at, where)
    named = str(decl.get("name", ""))
    if is_external(decl):
        # `external: {name: x}` (compose 3.x) names the object the CLI uses: `x`. Given with
        # a different top-level `name`, which one wins is the CLI's to pick: refused.
        flag = decl.get("external")
        if isinstance(flag, dict) and "name" in flag:
            inner = str(flag.get("name"))
            if named and inner != named:
                raise _refuse(where, f"{at}.external.name", "names another object than `name`")
            named = inner
        shared = section == "networks" and (named or name) == c.shared_network
        if not shared and not (section in ("secrets", "configs") and named.startswith(own)):
            raise _refuse(where, at, f"an external {section[:-1]} that is not this app's ({own}…)")
        return
    driver = _OBJECT_DRIVER.get(section)
    if driver is not None and decl.get("driver", driver) != driver:
        raise _refuse(
            where, f"{at}.driver", f"a {section[:-1]} the stack makes uses the {driver} driver"
        )
    if named and not named.startswith(own):
        raise _refuse(where, f"{at}.name", f"must start with {own} (the stack's own)")
    if isinstance(decl.get("file"), str):
        decl["file"] = _copy_in(decl["file"], c, f"{at}.file", where)


def _check_mounts(mounts: Any, volumes: set[str], at: str, where: str) -> None:
    """Named volumes the stack declares (their drivers are checked where they are declared)
    and tmpfs only. A short entry's source must be one of `volumes`
    exactly: the CLI takes anything else that looks like a path as a bind mount, and what
    looks like a path to it (`c:../..`, a Windows drive, is one; it resolves against the
    working folder) is not ours to guess."""
    for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
        here = f"{at}[{i}]"
        if _is_bind(mount):
            raise _refuse(where, here, "a bind mount of a host path")
        if isinstance(mount, str):
            source, _, rest = mount.partition(":")
            if not (source in volumes and rest.startswith("/")):
                raise _refuse(where, here, f"{source!r} is not a volume this stack declares")
        elif isinstance(mount, dict):
            if mount.get("type") not in ("volume", "tmpfs"):
                raise _refuse(where, f"{here}.type", "only volume and tmpfs mounts")
            _check_keys(mount, _MOUNT, here, where)
            named = mount.get("source")
            if mount.get("type") == "volume" and named is not None and named not in volumes:
                raise _refuse(where, f"{here}.source", f"{named!r} is not a declared volume")
        else:
            raise _refuse(where, here, "a mount is a string or a mapping")


def _check_attachments(networks: Any, shared: set[str], at: str, where: str) -> None:
    # On a network other stacks use, an alias could answer for another app's service name.
    if not isinstance(networks, dict):
        return
    for name, attach in networks.items():
        here = f"{at}.{name}"
        _check_keys(attach, _ATTACH, here, where)
        if isinstance(attach, dict) and attach.get("aliases") and str(name) in shared:
            raise _refuse(where, f"{here}.aliases", "an alias on a network other stacks use")


def _check_ports(ports: Any, c: Confinement, at: str, where: str) -> None:
    """The rule for published ports: they bypass the proxy and listen on the node's own
    interfaces, so a recipe publishes none unless the Confinement lists the port (never one
    of the host's services, see never_published). A swarm-chosen port (a target alone)
    publishes too; host mode binds outside swarm's port bookkeeping and is never allowed."""
    if ports is None:
        return
    if not isinstance(ports, list):
        raise _refuse(where, at, "ports are a list")
    for i, port in enumerate(ports):
        here = f"{at}[{i}]"
        _check_keys(port, _PORT, here, where)
        if isinstance(port, dict) and port.get("mode", "ingress") != "ingress":
            raise _refuse(where, f"{here}.mode", "a port published on the node itself")
        published = _published(port)
        if published is None:
            raise _refuse(where, here, "a published port swarm would choose")
        if published not in c.publish or never_published(published):
            raise _refuse(where, here, f"port {published} is not one this deploy may publish")


def _published(port: Any) -> int | None:
    """The published port of a `ports` entry (None: swarm chooses; -1: not one port)."""
    if isinstance(port, dict):
        value = port.get("published")
    elif isinstance(port, str):
        # [host_ip:]published:target[/protocol]; `target` alone lets swarm choose.
        parts = port.partition("/")[0].rsplit(":", 2)
        value = parts[-2] if len(parts) > 1 else None
    else:
        value = None  # an integer is a target alone
    if value is None or value == "":
        return None
    try:
        return value if isinstance(value, int) else to_int(str(value))
    except ValueError:
        return -1  # a range (`8000-8010`) or not a number


def _check_logging(logging: Any, at: str, where: str) -> None:
    _check_keys(logging, _LOGGING, at, where)
    if isinstance(logging, dict) and (logging.get("driver") or "json-file") not in _LOG_DRIVERS:
        raise _refuse(where, f"{at}.driver", "logs stay on the node: json-file or local only")


def _is_bind(mount: Any) -> bool:
    if isinstance(mount, str):
        return mount.partition(":")[0].startswith((".", "/", "~"))
    return isinstance(mount, dict) and mount.get("type") == "bind"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Non-blocking: a FIFO planted in the recipe must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _copy_in(path: str, c: Confinement, at: str, where: str) -> str:
    """The file, read inside the recipe folder without following links, as a private copy."""
    data = _read_inside(c.recipe_dir, path, at, where)
    name = os.path.basename(os.path.normpath(path))
    copy = c.files_to / f"{len(list(c.files_to.iterdir()))}-{name}"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return str(copy)


def _read_inside(folder: Path, path: str, at: str, where: str) -> bytes:
    """The regular file at `path` under `folder`, opened one component at a time from the
    folder itself (an openat walk), never through a link: with `sub -> /etc`, `sub/shadow`
    is refused, not read from /etc."""
    relative = os.path.normpath(path)
    parts = relative.split("/")
    if os.path.isabs(relative) or ".." in parts or relative == ".":
        raise _refuse(where, at, f"{path!r} is outside the recipe folder")
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(where, at, f"{folder}: {exc.strerror or exc}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                inner = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                shown = folder.joinpath(*parts[: i + 1])
                raise ConfigError(where, at, _open_problem(shown, part, fd, exc)) from None
            os.close(fd)
            fd = inner
        return _read_regular(fd, folder / relative, at, where)
    finally:
        os.close(fd)


def _open_problem(shown: Path, part: str, dir_fd: int, exc: OSError) -> str:
    # A link is refused with ELOOP (the file) or ENOTDIR (a folder): lstat tells them apart.
    try:
        link = stat.S_ISLNK(os.lstat(part, dir_fd=dir_fd).st_mode)
    except OSError:
        link = False
    if link:
        return f"{shown} is a symbolic link; refused"
    if exc.errno == errno.ENOENT:
        return f"{shown} not found"
    return f"{shown}: {exc.strerror or exc}"


def _read_regular(fd: int, shown: Path, at: str, where: str) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(where, at, f"{shown} is not a regular file")
    if info.st_nlink > 1:  # a hard link made in the recipe to a file elsewhere
        raise _refuse(where, at, f"{shown} has other hard links")
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RECIPE_FILE:
        chunk = os.read(fd, MAX_RECIPE_FILE + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_RECIPE_FILE:
        raise _refuse(where, at, f"{shown} is larger than {MAX_RECIPE_FILE} bytes")
    return b"".join(chunks)


def resolve_environment(
    doc: Mapping[str, Any], env: Mapping[str, str], *, where: str = DOC
) -> dict[str, Any]:
    """A copy where a service's `environment` entry without a value (list item `NAME`, or
    `NAME:` with null) takes its value from env, and is dropped when env does not set it.

    Left bare, the CLI would fill it from its own process environment: pvcheck's, not the
    app's (and one of pvcheck's secrets, if a recipe named it)."""
    out: dict[str, Any] = copy_tree(doc)
    for name, service in declared_objects(out, "services", where):
        given = service.get("environment")
        if isinstance(given, list):
            service["environment"] = [
                item if not isinstance(item, str) or "=" in item else f"{item}={env[item]}"
                for item in given
                if not isinstance(item, str) or "=" in item or item in env
            ]
        elif isinstance(given, dict):
            service["environment"] = {
                key: env[str(key)] if value is None else value
                for key, value in given.items()
                if value is not None or str(key) in env
            }
        elif given is not None:
            raise ConfigError(where, f"services.{name}.environment", "a mapping or a list")
    return out
