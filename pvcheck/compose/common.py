"""What the compose steps share: the sections that declare objects, walking and copying the
document, the docker CLI's scalar conversions, and reading a capped UTF-8 file."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pvcheck.errors import ConfigError, StateFileError
from pvcheck.safeio import read_capped

DOC = "compose file"  # the default name in errors when the caller does not give one
NAME = r"[_a-zA-Z][_a-zA-Z0-9]*"
DECLARED = ("networks", "volumes", "configs", "secrets")

Loc = tuple[str | int, ...]  # where a value sits: mapping keys and list indexes


def sub_mapping(parent: dict[str, Any], key: str, at: str, where: str) -> dict[str, Any]:
    """parent[key] as a mapping, made one when absent or null (`volumes: {content: }`)."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise ConfigError(where, at, "must be a mapping")
    return value


def declared_objects(
    doc: dict[str, Any], section: str, where: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    objects = doc.get(section)
    if objects is None:
        return
    if not isinstance(objects, dict):
        raise ConfigError(where, section, "must be a mapping")
    for name in objects:
        yield str(name), sub_mapping(objects, name, f"{section}.{name}", where)


def is_external(decl: Mapping[str, Any]) -> bool:
    # `external: {name: x}` is the older (compose 3.x) spelling of an external object.
    flag = decl.get("external")
    if isinstance(flag, str):
        try:
            return to_bool(flag)
        except ValueError:
            return False
    return flag is True or isinstance(flag, dict)


def to_int(text: str) -> int:
    # Go's strconv.Atoi: Python's int() would also take " 1" and "1_0".
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not an integer")
    return int(text)


def to_bool(text: str) -> bool:
    # The CLI's (YAML 1.1) words.
    words = {"y": True, "yes": True, "true": True, "on": True}
    words |= {"n": False, "no": False, "false": False, "off": False}
    if text.lower() not in words:
        raise ValueError("not a boolean")
    return words[text.lower()]


def to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def copy_tree(doc: Any) -> Any:
    # Not copy.deepcopy: it keeps YAML aliases shared, and labelling one service's aliased
    # `deploy` would then label every service that shares it, in place.
    if isinstance(doc, dict):
        return {key: copy_tree(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [copy_tree(value) for value in doc]
    return doc


def read_text(path: Path, cap: int) -> str:
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
