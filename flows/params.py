"""The flows' parameters as the Prefect UI's run form shows them: a title, a description for
an operator, and bounds the form shows and Prefect's validator explains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from pvcheck.config import (
    MAX_ALLOCATOR_BATCH,
    MAX_ALLOCATOR_CONCURRENCY,
    MAX_ALLOCATOR_ROUNDS,
    RUN_ID_PATTERN,
    AllocatorConfig,
)
from pvcheck.errors import ConfigError
from pvcheck.pinned import PINNED, pinned_path

# The form's defaults are the config's: one place for each (the caps are the constants).
_ALLOCATOR = AllocatorConfig.model_fields

# The form's field titles (the schema's `title`, the labels the UI shows), by parameter:
# pvcheck's own messages about a parameter name it by its title too.
TITLES = {
    "target": "Host",
    "allocator_batch": "Throwaway stacks per round",
    "allocator_concurrency": "Stacks at once",
    "allocator_rounds": "Rounds",
    "canary": "Canary (lab only)",
    "adopt": "Adopt a finished harness run",
}
FORM = "the run form"


def served_config(target: str) -> Path:
    """The pinned config the form's Host names; an unknown one is refused by that title."""
    try:
        return pinned_path(target)
    except ConfigError as exc:
        if not target or exc.path != PINNED:
            raise
        raise ConfigError(FORM, TITLES["target"], exc.problem) from None


def _shown(default: Any, title: str, description: str) -> Any:
    """A parameter's default with the title and help text the form shows (Prefect keeps
    a default Field's description; the bounds must sit on the type)."""
    return Field(default, description=description, json_schema_extra={"title": title})


# A served config's target name, never a path: `pvcheck serve` pins the configs, so whoever
# can reach the Prefect API cannot make root run a config of theirs.
Host = Annotated[str, Field(max_length=63)]
TARGET = _shown(
    "",
    TITLES["target"],
    "The host, by the name its config gives it (`target.name`). The configs are fixed when "
    "pvcheck is served; empty means the first served host.",
)
Batch = Annotated[int, Field(ge=1, le=MAX_ALLOCATOR_BATCH)]
BATCH = _shown(
    _ALLOCATOR["batch"].default,
    TITLES["allocator_batch"],
    "How many recipe-shaped throwaway stacks each round of the allocator reproduction deploys "
    f"and removes with `docker stack rm` (1 to {MAX_ALLOCATOR_BATCH}).",
)
Concurrency = Annotated[int, Field(ge=1, le=MAX_ALLOCATOR_CONCURRENCY)]
CONCURRENCY = _shown(
    _ALLOCATOR["concurrency"].default,
    TITLES["allocator_concurrency"],
    "How many throwaway stacks are deployed or removed at the same time "
    f"(1 to {MAX_ALLOCATOR_CONCURRENCY}).",
)
Rounds = Annotated[int, Field(ge=1, le=MAX_ALLOCATOR_ROUNDS)]
ROUNDS = _shown(
    _ALLOCATOR["rounds"].default,
    TITLES["allocator_rounds"],
    f"Deploy-then-remove rounds of the reproduction (1 to {MAX_ALLOCATOR_ROUNDS}).",
)
CANARY = _shown(
    False,
    TITLES["canary"],
    "On the built-in lab only: make the real allocator log the VIP-exhaustion line and prove "
    "the upgrade guard counts it. Refused against any other engine.",
)
# A run id as the runs folder names it, or empty.
AdoptRun = Annotated[str, Field(max_length=64, pattern=f"^$|{RUN_ID_PATTERN}")]
ADOPT = _shown(
    "",
    TITLES["adopt"],
    "A harness run's id (cc-ci: its Drone build number, e.g. 608). Given, no deploy is started: "
    "the run counts as M2's deploy proof when it started after the fix, passed every required "
    "tier, reported a clean teardown and its stacks are gone from the host. Empty: deploy one.",
)
