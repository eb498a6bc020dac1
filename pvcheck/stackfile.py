"""Prepare a recipe's compose file for `docker stack deploy`: env, interpolation, labels, paths."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

from pvcheck.errors import ConfigError, StateFileError
from pvcheck.safeio import read_capped, writable_by_others

MAX_COMPOSE_BYTES = 1024 * 1024
MAX_ENV_BYTES = 256 * 1024
# safe_load shares aliased nodes, so a small file can stand for a huge tree (a "billion
# laughs"); every walk below copies the tree, so its size and depth are bounded first.
MAX_NODES = 200_000
MAX_EXPANDED = 4 * 1024 * 1024  # bytes of text once aliases are expanded
MAX_DEPTH = 64

DOC = "compose file"  # the default name in errors when the caller does not give one
_NAME = r"[_a-zA-Z][_a-zA-Z0-9]*"
_NAME_RE = re.compile(_NAME)
# Longest first, so `:-` is not read as `:` followed by a default starting with `-`.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_DECLARED = ("networks", "volumes", "configs", "secrets")

_Loc = tuple[str | int, ...]  # where a value sits: mapping keys and list indexes


# --- env files -----------------------------------------------------------------------------


class _EnvProblem(Exception):
    pass


_ENV_KEY = re.compile(_NAME)
_ENV_REF = re.compile(rf"\$(?:\{{({_NAME})\}}|({_NAME}))")
_AFTER_QUOTE = re.compile(r"\s*(#.*)?")
_INLINE_COMMENT = re.compile(r"\s#")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an abra-style env file (KEY=VALUE lines); ConfigError names the line."""
    return parse_env(_read_text(path, MAX_ENV_BYTES), str(path))


def parse_env(text: str, where: str) -> dict[str, str]:
    """Parse env file text. `$NAME`/`${NAME}` in unquoted and double-quoted values expand to
    a key set on an earlier line (as abra's godotenv does); single quotes keep text as is."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"export\s", line):
            line = line[len("export") :].lstrip()
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not eq or not _ENV_KEY.fullmatch(key):
            raise ConfigError(
                where, f"line {number}", "expected KEY=VALUE (KEY: letters, _, digits)"
            )
        try:
            env[key] = _env_value(rest, env)
        except _EnvProblem as exc:
            raise ConfigError(where, f"line {number}", f"{key}: {exc}") from None
    return env


def _env_value(rest: str, env: Mapping[str, str]) -> str:
    text = rest.lstrip()
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise _EnvProblem("no closing single quote (values span one line)")
        value, tail = text[1:end], text[end + 1 :]
    elif text.startswith('"'):
        value, used = _expand(text[1:], env, quoted=True)
        tail = text[1 + used :]
    else:
        # `#` starts a comment only after whitespace, so `COLOR=#fff` keeps its value.
        cut = _INLINE_COMMENT.search(rest)
        return _expand((rest[: cut.start()] if cut else rest).strip(), env, quoted=False)[0]
    if not _AFTER_QUOTE.fullmatch(tail):
        raise _EnvProblem("text after the closing quote")
    return value


def _expand(text: str, env: Mapping[str, str], quoted: bool) -> tuple[str, int]:
    """Expand references in `text`; when quoted, stop after the closing double quote.

    Returns the value and how many characters were used."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if quoted and char == '"':
            return "".join(out), i + 1
        if char == "\\" and i + 1 < len(text) and (quoted or text[i + 1] == "$"):
            nxt = text[i + 1]
            out.append({"n": "\n", "r": "\r"}.get(nxt, nxt) if quoted else nxt)
            i += 2
            continue
        if char == "$":
            ref = _ENV_REF.match(text, i)
            if ref:
                name = ref[1] or ref[2]
                # godotenv would substitute "" for an unknown name and silently change the
                # value (a password with a `$` in it): refuse and say how to keep it literal.
                if name not in env:
                    raise _EnvProblem(
                        f"${name} is not set on an earlier line (single-quote the value, or "
                        "write \\$, for a literal $)"
                    )
                out.append(env[name])
                i = ref.end()
                continue
            if text.startswith("${", i):
                raise _EnvProblem("${ must be followed by a NAME and }")
        out.append(char)
        i += 1
    if quoted:
        raise _EnvProblem("no closing double quote (values span one line)")
    return "".join(out), i


# --- interpolation -------------------------------------------------------------------------


class _TemplateError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class _Ref:
    name: str
    op: str  # "" for $NAME / ${NAME}, else one of _OPERATORS
    arg: tuple[_Node, ...]  # the default, message or alternative (itself a template)


_Node = str | _Ref


@dataclass(frozen=True)
class Reference:
    """A variable a compose value refers to. Required: always evaluated and without a default
    or alternative, so an unset value is an error (references nested in another's default,
    message or alternative are evaluated only sometimes, so never required)."""

    name: str
    required: bool


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[_Node, ...]:
    nodes, end = _parse_from(text, 0, nested=False)
    assert end == len(text)
    return nodes


def _parse_from(text: str, i: int, nested: bool) -> tuple[tuple[_Node, ...], int]:
    """Compose's grammar: `$$` is a `$`; `$NAME`; `${NAME}` or `${NAME<op><template>}`, where
    the template may hold further references (compose nests them); a `$` before anything else
    is kept as it is. Nested: stop after the `}` that closes the enclosing reference."""
    nodes: list[_Node] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            nodes.append("".join(literal))
            literal.clear()

    while i < len(text):
        char = text[i]
        if nested and char == "}":
            flush()
            return tuple(nodes), i + 1
        if char != "$":
            literal.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            literal.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            ref, i = _parse_braced(text, i)
            flush()
            nodes.append(ref)
            continue
        name = _NAME_RE.match(text, i + 1)
        if name:
            flush()
            nodes.append(_Ref(name[0], "", ()))
            i = name.end()
            continue
        literal.append(char)
        i += 1
    if nested:
        raise _TemplateError(f"invalid interpolation {text!r}: a ${{ is never closed")
    flush()
    return tuple(nodes), i


def _parse_braced(text: str, start: int) -> tuple[_Ref, int]:
    name = _NAME_RE.match(text, start + 2)
    if not name:
        raise _TemplateError(
            f"invalid interpolation {text!r}: ${{ must be followed by a NAME (write $$ for a "
            "literal $)"
        )
    i = name.end()
    if text.startswith("}", i):
        return _Ref(name[0], "", ()), i + 1
    if i == len(text):
        raise _TemplateError(f"invalid interpolation {text!r}: a ${{ is never closed")
    op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
    if op is None:
        raise _TemplateError(
            f"invalid interpolation {text!r}: after ${{{name[0]} compose allows only }}, "
            ":-, -, :?, ?, :+ or +"
        )
    arg, end = _parse_from(text, i + len(op), nested=True)
    return _Ref(name[0], op, arg), end


_Missing = Callable[[str, str | None], None]  # (name, message of ?/:? or None)


def _evaluate(nodes: tuple[_Node, ...], env: Mapping[str, str], missing: _Missing) -> str:
    return "".join(n if isinstance(n, str) else _resolve_ref(n, env, missing) for n in nodes)


def _resolve_ref(ref: _Ref, env: Mapping[str, str], missing: _Missing) -> str:
    value = env.get(ref.name)
    # The colon forms treat an empty value like an unset one.
    present = value is not None and (value != "" or not ref.op.startswith(":"))
    kind = ref.op[-1:]
    if kind == "+":
        return _evaluate(ref.arg, env, missing) if present else ""
    if present and value is not None:
        return value
    if kind == "-":
        return _evaluate(ref.arg, env, missing)
    # Compose substitutes "" for an unset plain reference (with a warning); pvcheck refuses:
    # an empty domain or image deploys something other than the recipe.
    message = _evaluate(ref.arg, env, lambda _n, _m: None) if kind == "?" else None
    missing(ref.name, message)
    return ""


def _strings(doc: Any, path: _Loc = ()) -> Iterator[tuple[str, _Loc]]:
    """Every string value in the tree. Keys are not values: compose never interpolates them."""
    if isinstance(doc, str):
        yield doc, path
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _strings(value, (*path, index))


def _field(path: _Loc) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _parsed(text: str, path: _Loc, where: str) -> tuple[_Node, ...]:
    try:
        return _parse(text)
    except _TemplateError as exc:
        raise ConfigError(where, _field(path), exc.problem) from None
    except RecursionError:  # `${A:-${A:-…` thousands deep
        raise ConfigError(where, _field(path), "variables nested too deeply") from None


def references(doc: Any, *, where: str = DOC) -> set[Reference]:
    """The variable references in the document's values."""

    def walk(nodes: tuple[_Node, ...], nested: bool) -> Iterator[Reference]:
        for node in nodes:
            if isinstance(node, _Ref):
                yield Reference(node.name, not nested and node.op in ("", "?", ":?"))
                yield from walk(node.arg, nested=True)

    found: set[Reference] = set()
    for text, path in _strings(doc):
        found.update(walk(_parsed(text, path, where), nested=False))
    return found


def variables(doc: Any, *, where: str = DOC) -> set[str]:
    """The names of every variable the document's values refer to."""
    return {ref.name for ref in references(doc, where=where)}


def required_variables(doc: Any, *, where: str = DOC) -> set[str]:
    """The names referred to without a default (see Reference.required)."""
    return {ref.name for ref in references(doc, where=where) if ref.required}


def _missing(doc: Any, env: Mapping[str, str], where: str) -> dict[str, tuple[str, str | None]]:
    """name -> (first field, ?-message) for every variable interpolation would fail on. It
    evaluates, so a reference nested in a default counts only when that default is used."""
    found: dict[str, tuple[str, str | None]] = {}
    for text, path in _strings(doc):

        def note(name: str, message: str | None, path: _Loc = path) -> None:
            found.setdefault(name, (_field(path), message))

        _evaluate(_parsed(text, path, where), env, note)
    return found


def unset_variables(doc: Any, env: Mapping[str, str], *, where: str = DOC) -> list[str]:
    """The variables the document needs that env does not give (sorted): referred to without
    a default and not in env, or `${NAME:?...}` with an empty value. Never one with a default."""
    return sorted(_missing(doc, env, where))


def interpolate(doc: Any, env: Mapping[str, str], where: str, *, escape: bool = True) -> Any:
    """A copy with every string value interpolated as compose does (keys are left as they are).

    The docker CLI interpolates the file again. So that it finds nothing left to do, every
    `$` in the result is written back as `$$` (escape=False leaves the plain values, for a
    caller that escapes once at the end with escape_dollars)."""

    def refuse(name: str, message: str | None) -> None:
        if message is None:
            raise _TemplateError(f"variable {name} is not set in the env and has no default")
        raise _TemplateError(f"required variable {name} is missing a value: {message}")

    def one(value: Any, path: _Loc) -> Any:
        if isinstance(value, dict):
            return {key: one(item, (*path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [one(item, (*path, index)) for index, item in enumerate(value)]
        if not isinstance(value, str):
            return value
        try:
            result = _evaluate(_parsed(value, path, where), env, refuse)
        except _TemplateError as exc:
            raise ConfigError(where, _field(path), exc.problem) from None
        cast = _caster(path)
        # As the CLI does: a value that interpolation changed is converted where the schema
        # wants a number or a boolean (`replicas: ${REPLICAS:-1}`); the CLI would not convert
        # it afterwards, as it no longer changes there.
        if cast is not None and result != value:
            try:
                return cast(result)
            except ValueError as exc:
                raise ConfigError(where, _field(path), f"{result!r}: {exc}") from None
        return result.replace("$", "$$") if escape else result

    return one(doc, ())


def escape_dollars(doc: Any) -> Any:
    """A copy with every `$` in a string value doubled, so compose reads it literally."""
    if isinstance(doc, str):
        return doc.replace("$", "$$")
    if isinstance(doc, dict):
        return {key: escape_dollars(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [escape_dollars(value) for value in doc]
    return doc


def _to_int(text: str) -> int:
    # Go's strconv.Atoi: Python's int() would also take " 1" and "1_0".
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not an integer")
    return int(text)


def _to_bool(text: str) -> bool:
    # The CLI's (YAML 1.1) words.
    words = {"y": True, "yes": True, "true": True, "on": True}
    words |= {"n": False, "no": False, "false": False, "off": False}
    if text.lower() not in words:
        raise ValueError("not a boolean")
    return words[text.lower()]


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


_SVC = ("services", "*")
# The docker CLI's interpolateTypeCastMapping (cli/compose/loader/interpolate.go); "*" is
# any key, "[]" any list index.
_CASTS: dict[tuple[str, ...], Callable[[str], Any]] = {
    (*_SVC, "configs", "[]", "mode"): _to_int,
    (*_SVC, "secrets", "[]", "mode"): _to_int,
    (*_SVC, "healthcheck", "retries"): _to_int,
    (*_SVC, "healthcheck", "disable"): _to_bool,
    (*_SVC, "deploy", "replicas"): _to_int,
    (*_SVC, "deploy", "update_config", "parallelism"): _to_int,
    (*_SVC, "deploy", "update_config", "max_failure_ratio"): _to_float,
    (*_SVC, "deploy", "rollback_config", "parallelism"): _to_int,
    (*_SVC, "deploy", "rollback_config", "max_failure_ratio"): _to_float,
    (*_SVC, "deploy", "restart_policy", "max_attempts"): _to_int,
    (*_SVC, "deploy", "placement", "max_replicas_per_node"): _to_int,
    (*_SVC, "ports", "[]", "target"): _to_int,
    (*_SVC, "ports", "[]", "published"): _to_int,
    (*_SVC, "ulimits", "*"): _to_int,
    (*_SVC, "ulimits", "*", "hard"): _to_int,
    (*_SVC, "ulimits", "*", "soft"): _to_int,
    (*_SVC, "privileged"): _to_bool,
    (*_SVC, "read_only"): _to_bool,
    (*_SVC, "stdin_open"): _to_bool,
    (*_SVC, "tty"): _to_bool,
    (*_SVC, "volumes", "[]", "read_only"): _to_bool,
    (*_SVC, "volumes", "[]", "volume", "nocopy"): _to_bool,
    **{(section, "*", "external"): _to_bool for section in _DECLARED},
    ("networks", "*", "internal"): _to_bool,
    ("networks", "*", "attachable"): _to_bool,
}


def _caster(path: _Loc) -> Callable[[str], Any] | None:
    for pattern, cast in _CASTS.items():
        if len(pattern) == len(path) and all(
            (p == "[]") if isinstance(part, int) else (p in ("*", part))
            for p, part in zip(pattern, path, strict=True)
        ):
            return cast
    return None


# --- labels and paths ----------------------------------------------------------------------


def _entry(parent: dict[str, Any], key: str, at: str, where: str) -> dict[str, Any]:
    """parent[key] as a mapping, made one when absent or null (`volumes: {content: }`)."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise ConfigError(where, at, "must be a mapping")
    return value


def _declared(
    doc: dict[str, Any], section: str, where: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    objects = doc.get(section)
    if objects is None:
        return
    if not isinstance(objects, dict):
        raise ConfigError(where, section, "must be a mapping")
    for name in objects:
        yield str(name), _entry(objects, name, f"{section}.{name}", where)


def _external(decl: Mapping[str, Any]) -> bool:
    # `external: {name: x}` is the older (compose 3.x) spelling of an external object.
    flag = decl.get("external")
    if isinstance(flag, str):
        try:
            return _to_bool(flag)
        except ValueError:
            return False
    return flag is True or isinstance(flag, dict)


def normalise_labels(value: Any, at: str = "labels", where: str = DOC) -> dict[str, Any]:
    """Compose labels as a mapping: a list item "k=v" is k: v, and a bare "k" is k: ""."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, list):
        pairs = (str(item).partition("=") for item in value)
        return {key: text for key, _eq, text in pairs}
    raise ConfigError(where, at, "labels are a mapping or a list of key=value strings")


def _merge(parent: dict[str, Any], at: str, labels: Mapping[str, str], where: str) -> set[str]:
    """Set parent["labels"] to its own labels plus ours; returns the keys ours replaced."""
    own = normalise_labels(parent.get("labels"), at, where)
    parent["labels"] = {**own, **labels}
    return own.keys() & labels.keys()


def inject_labels(
    doc: Mapping[str, Any], labels: Mapping[str, str], *, where: str = DOC
) -> tuple[dict[str, Any], list[str]]:
    """A copy where every service (as swarm service labels, `deploy.labels`, and container
    labels, `labels`) and every declared network, volume, config and secret that is not
    external carries `labels`; external objects are not this stack's to label. On a clash our
    value wins (a recipe may not set the run label); the keys it tried are returned, sorted."""
    out: dict[str, Any] = _copy(doc)
    clashes: set[str] = set()
    if any(not (svc or {}).get("networks") for svc in (out.get("services") or {}).values()):
        # A service without networks joins `<stack>_default`, which the CLI creates: declared
        # here, it is labelled like every other object the stack makes.
        networks = _entry(out, "networks", "networks", where)
        networks.setdefault("default", {})
    for name, service in _declared(out, "services", where):
        at = f"services.{name}"
        deploy = _entry(service, "deploy", f"{at}.deploy", where)
        clashes |= _merge(deploy, f"{at}.deploy.labels", labels, where)
        clashes |= _merge(service, f"{at}.labels", labels, where)
    for section in _DECLARED:
        for name, decl in _declared(out, section, where):
            if not _external(decl):
                clashes |= _merge(decl, f"{section}.{name}.labels", labels, where)
    return out, sorted(clashes)


def _absolute(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def absolutize_files(doc: Mapping[str, Any], base_dir: Path, *, where: str = DOC) -> dict[str, Any]:
    """A copy whose relative file paths are made absolute against base_dir (the recipe's
    folder): the prepared file is written to another folder, and compose resolves relative
    paths against the folder of the file. Covers `file:` of configs and secrets, services'
    `env_file`, and relative bind-mount sources (short syntax `./x:/y`, long `type: bind`)."""
    out: dict[str, Any] = _copy(doc)
    base = os.path.abspath(base_dir)
    for section in ("configs", "secrets"):
        for _name, decl in _declared(out, section, where):
            if isinstance(decl.get("file"), str):
                decl["file"] = _absolute(decl["file"], base)
    for _name, service in _declared(out, "services", where):
        env_file = service.get("env_file")
        if isinstance(env_file, str):
            service["env_file"] = _absolute(env_file, base)
        elif isinstance(env_file, list):
            for item in env_file:
                if isinstance(item, dict) and isinstance(item.get("path"), str):
                    item["path"] = _absolute(item["path"], base)
            service["env_file"] = [
                _absolute(item, base) if isinstance(item, str) else item for item in env_file
            ]
        mounts = service.get("volumes")
        if isinstance(mounts, list):
            service["volumes"] = [_bind_source(mount, base) for mount in mounts]
    return out


def _bind_source(mount: Any, base: str) -> Any:
    # The CLI reads a short-syntax source as a host path only when it starts with `.`, `/`
    # or `~` (else it is a volume name); `~` is the CLI user's home wherever the file is.
    if isinstance(mount, str) and mount.startswith("."):
        source, colon, rest = mount.partition(":")
        return _absolute(source, base) + colon + rest
    if isinstance(mount, dict) and mount.get("type") == "bind":
        host = mount.get("source")
        if isinstance(host, str) and host and not host.startswith("~"):
            mount["source"] = _absolute(host, base)
    return mount


# --- what a recipe may reach ----------------------------------------------------------------
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


_TOP: _Keys = _any("version", "services", *_DECLARED)
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
    out: dict[str, Any] = _copy(doc)
    _check_keys(out, _TOP, "", where)
    declared = _declared(out, "networks", where)
    shared = {name for name, decl in declared if _external(decl)}
    volumes = {name for name, _decl in _declared(out, "volumes", where)}
    for name, service in _declared(out, "services", where):
        _confine_service(service, f"services.{name}", c, shared, volumes, where)
    for section in _DECLARED:
        for name, decl in _declared(out, section, where):
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
    if _external(decl):
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
        return value if isinstance(value, int) else _to_int(str(value))
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
    out: dict[str, Any] = _copy(doc)
    for name, service in _declared(out, "services", where):
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


# --- files ---------------------------------------------------------------------------------


def _read_text(path: Path, cap: int) -> str:
    try:
        data = read_capped(path, cap)
    except StateFileError as exc:
        raise ConfigError(str(path), "", exc.problem) from None
    if data is None:
        raise ConfigError(str(path), "", "file not found")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 text: {exc}") from None


# libyaml's parser when PyYAML was built with it (a 1 MB file: 0.6 s, not 5 s), with the same
# Python constructor and resolvers; the pure-Python parser otherwise.
if TYPE_CHECKING or not yaml.__with_libyaml__:  # noqa: SIM108 (mypy needs a class base)
    _YamlBase = yaml.SafeLoader
else:
    _YamlBase = yaml.CSafeLoader


class _ComposeLoader(_YamlBase):
    """YAML as the docker CLI reads it (YAML 1.2-like): `22:22` stays a string, not PyYAML's
    base-60 1342, and a key given twice is an error, not the last one silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # One pass with a set (a list's count() made a 1 MB file take minutes). Merge keys
        # (`<<: *base`) are left to the base class, which merges them: a key of the mapping
        # itself may override a merged one, as the CLI's YAML allows.
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                given = key in seen
            except TypeError:
                continue  # unhashable: the base class refuses it with its own message
            if given:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Without the YAML 1.1 sexagesimal forms (`1:20` is text), as yaml.v2 reads ports and times.
_ComposeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_compose(path: Path) -> dict[str, Any]:
    """The compose file as a mapping with a `services` mapping (ConfigError naming the file)."""
    where = str(path)
    try:
        # A SafeLoader (no Python objects), with the YAML the docker CLI reads.
        doc = yaml.load(_read_text(path, MAX_COMPOSE_BYTES), Loader=_ComposeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(where, "", f"not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(where, "", "nested too deeply") from None
    if not isinstance(doc, dict):
        raise ConfigError(where, "", "a compose file is a mapping (with a services mapping)")
    _bounded(doc, where)
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise ConfigError(
            where, "services", "a compose file needs a services mapping (with a service)"
        )
    for name, service in services.items():
        if not isinstance(service, dict):
            raise ConfigError(where, f"services.{name}", "a service is a mapping")
    for section in _DECLARED:
        for _ in _declared(doc, section, where):  # checks each is a mapping (or null)
            pass
    return doc


def _bounded(doc: Any, where: str) -> None:
    """Refuse a tree (as the walks see it, aliases expanded) past MAX_NODES, MAX_DEPTH or
    MAX_EXPANDED bytes of text: a small file of aliases can expand to gigabytes."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    seen = size = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        size += len(node) if isinstance(node, str) else 8
        if seen > MAX_NODES or depth > MAX_DEPTH or size > MAX_EXPANDED:
            raise ConfigError(
                where, "", f"too large or nested too deeply (aliases expand past {MAX_NODES})"
            )
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _copy(doc: Any) -> Any:
    # Not copy.deepcopy: it keeps YAML aliases shared, and labelling one service's aliased
    # `deploy` would then label every service that shares it, in place.
    if isinstance(doc, dict):
        return {key: _copy(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [_copy(value) for value in doc]
    return doc


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # write every value in full: the file is read by another program


def dump_compose(doc: Mapping[str, Any]) -> str:
    return yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)


def prepare(
    path: Path,
    env: Mapping[str, str],
    labels: Mapping[str, str],
    where: str | None = None,
    confinement: Confinement | None = None,
) -> tuple[str, list[str]]:
    """The compose file ready for `docker stack deploy -c`, and the label keys the recipe
    tried to set itself (ours won). Refuses, naming each, variables the file needs that env
    does not give."""
    where = where or str(path)
    doc = load_compose(path)
    missing = _missing(doc, env, where)
    if missing:
        named = ", ".join(
            f"{name} (at {at}{': ' + message if message else ''})"
            for name, (at, message) in sorted(missing.items())
        )
        raise ConfigError(where, "", f"variables not set in the env: {named}")
    doc = interpolate(doc, env, where, escape=False)
    doc = resolve_environment(doc, env, where=where)
    if confinement is not None:
        doc = confine(doc, confinement, where=where)
    else:
        doc = absolutize_files(doc, path.absolute().parent, where=where)
    doc, overridden = inject_labels(doc, labels, where=where)
    # Escaped once, last: labels normalised from list items become mapping keys, which the
    # CLI does not interpolate, so they must not carry a doubled `$`.
    return dump_compose(escape_dollars(doc)), overridden
