"""Loading a compose file as the docker CLI reads its YAML (a key given twice is an error,
aliases bounded), and writing one back out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pvcheck.compose.common import DECLARED, declared_objects, read_text
from pvcheck.errors import ConfigError

MAX_COMPOSE_BYTES = 1024 * 1024
# safe_load shares aliased nodes, so a small file can stand for a huge tree (a "billion
# laughs"); every later walk (interpolation, labels, confinement) copies the tree, so its
# size and depth are bounded when the file is loaded.
MAX_NODES = 200_000
MAX_EXPANDED = 4 * 1024 * 1024  # bytes of text once aliases are expanded
MAX_DEPTH = 64


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
        doc = yaml.load(read_text(path, MAX_COMPOSE_BYTES), Loader=_ComposeLoader)
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
    for section in DECLARED:
        for _ in declared_objects(doc, section, where):  # checks each is a mapping (or null)
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


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # write every value in full: the file is read by another program


def dump_compose(doc: Mapping[str, Any]) -> str:
    return yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)
