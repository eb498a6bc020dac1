"""Test helpers: write variants of the shipped lab config into a temp folder."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def held_in_another_process(import_line: str, lock_expr: str, folder: Path) -> Iterator[None]:
    """Hold a pvcheck lock in a child process (as another pvcheck would) while the body runs;
    the child is killed afterwards, so the kernel releases the lock."""
    code = (
        f"import sys, time; from pathlib import Path; {import_line}\n"
        f"with {lock_expr}:\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()
