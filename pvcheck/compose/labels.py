"""The run's labels on every object a stack creates, and recipe-relative paths made absolute."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvcheck.compose.common import (
    DECLARED,
    DOC,
    copy_tree,
    declared_objects,
    is_external,
    sub_mapping,
)
from pvcheck.errors import ConfigError


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
    out: dict[str, Any] = copy_tree(doc)
    clashes: set[str] = set()
    if any(not (svc or {}).get("networks") for svc in (out.get("services") or {}).values()):
        # A service without networks joins `<stack>_default`, which the CLI creates: declared
        # here, it is labelled like every other object the stack makes.
        networks = sub_mapping(out, "networks", "networks", where)
        networks.setdefault("default", {})
    for name, service in declared_objects(out, "services", where):
        at = f"services.{name}"
        deploy = sub_mapping(service, "deploy", f"{at}.deploy", where)
        clashes |= _merge(deploy, f"{at}.deploy.labels", labels, where)
        clashes |= _merge(service, f"{at}.labels", labels, where)
    for section in DECLARED:
        for name, decl in declared_objects(out, section, where):
            if not is_external(decl):
                clashes |= _merge(decl, f"{section}.{name}.labels", labels, where)
    return out, sorted(clashes)


def _absolute(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def absolutize_files(doc: Mapping[str, Any], base_dir: Path, *, where: str = DOC) -> dict[str, Any]:
    """A copy whose relative file paths are made absolute against base_dir (the recipe's
    folder): the prepared file is written to another folder, and compose resolves relative
    paths against the folder of the file. Covers `file:` of configs and secrets, services'
    `env_file`, and relative bind-mount sources (short syntax `./x:/y`, long `type: bind`)."""
    out: dict[str, Any] = copy_tree(doc)
    base = os.path.abspath(base_dir)
    for section in ("configs", "secrets"):
        for _name, decl in declared_objects(out, section, where):
            if isinstance(decl.get("file"), str):
                decl["file"] = _absolute(decl["file"], base)
    for _name, service in declared_objects(out, "services", where):
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
