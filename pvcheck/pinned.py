"""Which configs a flow may run: pinned by whoever started pvcheck, never chosen by a run.

`pvcheck run --config F` and `pvcheck serve --config F` pin their configs (by target name)
in this process's environment, which the flow runs a served process starts inherit. A flow
run names one of them (the UI form offers the names); a path never comes from a run's
parameters, so whoever can reach the Prefect API cannot make root run a config of theirs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pvcheck.config import Config, load_config
from pvcheck.errors import ConfigError

ENV = "PVCHECK_PINNED_CONFIGS"
PINNED = "<pinned>"  # where a ConfigError about a pinned name points


def pin(paths: list[str]) -> dict[str, Config]:
    """Load and pin configs; returns them by target name (names must differ)."""
    configs: dict[str, Config] = {}
    for path in paths:
        cfg = load_config(path)
        if cfg.target.name in configs:
            raise ConfigError(path, "target.name", f"{cfg.target.name!r} is pinned twice")
        configs[cfg.target.name] = cfg
    os.environ[ENV] = json.dumps({n: str(c.source.resolve()) for n, c in configs.items()})
    return configs


def pinned_path(name: str = "") -> Path:
    """The pinned config of that target name (the first one when name is empty)."""
    try:
        table = json.loads(os.environ.get(ENV, "{}"))
    except ValueError:
        table = {}
    if not isinstance(table, dict) or not table:
        raise ConfigError(
            "<none>", "config", "no config is pinned: start with `pvcheck run --config FILE` "
            "or `pvcheck serve --config FILE`",
        )  # fmt: skip
    if not name:
        return Path(next(iter(table.values())))
    if name not in table:
        raise ConfigError(PINNED, "config", f"{name!r} is not one of {sorted(table)}")
    return Path(table[name])


def pinned_all() -> dict[str, Path]:
    """Every pinned config by target name (empty when none is pinned)."""
    try:
        table = json.loads(os.environ.get(ENV, "{}"))
    except ValueError:
        return {}
    return {str(k): Path(v) for k, v in table.items()} if isinstance(table, dict) else {}
