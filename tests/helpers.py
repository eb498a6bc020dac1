"""Test helpers: write variants of the shipped lab config into a temp folder."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
LAB_CONFIG = ROOT / "lab" / "pvcheck.toml"
CCCI_CONFIG = ROOT / "deployments" / "cc-ci.toml"

PVFIX_DONE = "# STATUS — pvfix\n\n## DONE\n"


def lab_raw() -> dict[str, Any]:
    """The lab config as a dict, with its relative paths made absolute."""
    raw = tomllib.loads(LAB_CONFIG.read_text(encoding="utf-8"))
    base = LAB_CONFIG.parent
    compose = raw["deploy"]["compose"]
    for key in ("file", "upgrade_file"):
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
    if mutate:
        mutate(raw)
    path = tmp_path / name
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path
