"""A variant of the shipped lab config written into a scratch folder (its own machine-docs
with pvfix done, its own state folder): what the bench and the tests run against."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from pvcheck.config import LAB_CONFIG

PVFIX_DONE = "# STATUS — pvfix\n\n## DONE\n"

FOUR_TIERS = ["install", "upgrade", "backup_restore", "functional"]


def all_tiers(raw: dict[str, Any]) -> None:
    """write_config mutation: the shipped lab config's four tiers, as `pvcheck run` runs it."""
    raw["deploy"]["tiers"] = list(FOUR_TIERS)


def lab_raw() -> dict[str, Any]:
    """The lab config as a dict, with its relative paths made absolute."""
    raw = tomllib.loads(LAB_CONFIG.read_text(encoding="utf-8"))
    base = LAB_CONFIG.parent
    compose = raw["deploy"]["compose"]
    for key in ("file", "upgrade_file", "env_file"):
        if key in compose:
            compose[key] = str(base / compose[key])
    raw["guard"]["file"] = str(base / raw["guard"]["file"])
    return raw


def write_config(
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    name: str = "pvcheck.toml",
) -> Path:
    """A lab config whose machine-docs folder is tmp_path/docs (with pvfix done)."""
    raw = lab_raw()
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "STATUS-pvfix.md").write_text(PVFIX_DONE, encoding="utf-8")
    raw["docs"]["dir"] = str(docs)
    raw["target"]["state_dir"] = str(tmp_path / "state")
    # The recipe's install tier only: most tests are about other stages, and the four tiers
    # take half a minute per run. Tests of the tiers use `all_tiers`.
    raw["deploy"]["tiers"] = ["install"]
    if mutate:
        mutate(raw)
    path = tmp_path / name
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path
