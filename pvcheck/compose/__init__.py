"""Prepare a recipe's compose file for `docker stack deploy`: env, interpolation, labels, paths.

One module a step; none imports the package, and only pipeline imports the other steps:
common (what the others share), envfile (the app's env file), interpolate (compose's
variable syntax), labels (the run's labels; relative paths), confine (what a recipe may
reach), yamlio (loading and writing the YAML) and pipeline (prepare: the steps in order)."""

from pvcheck.compose.common import DOC
from pvcheck.compose.confine import (
    MAX_RECIPE_FILE,
    Confinement,
    confine,
    never_published,
    resolve_environment,
)
from pvcheck.compose.envfile import MAX_ENV_BYTES, parse_env, read_env_file
from pvcheck.compose.interpolate import (
    Reference,
    escape_dollars,
    interpolate,
    references,
    unset_variables,
)
from pvcheck.compose.labels import absolutize_files, inject_labels, normalise_labels
from pvcheck.compose.pipeline import prepare
from pvcheck.compose.yamlio import (
    MAX_COMPOSE_BYTES,
    MAX_DEPTH,
    MAX_EXPANDED,
    MAX_NODES,
    dump_compose,
    load_compose,
)

__all__ = [
    "DOC",
    "MAX_COMPOSE_BYTES",
    "MAX_DEPTH",
    "MAX_ENV_BYTES",
    "MAX_EXPANDED",
    "MAX_NODES",
    "MAX_RECIPE_FILE",
    "Confinement",
    "Reference",
    "absolutize_files",
    "confine",
    "dump_compose",
    "escape_dollars",
    "inject_labels",
    "interpolate",
    "load_compose",
    "never_published",
    "normalise_labels",
    "parse_env",
    "prepare",
    "read_env_file",
    "references",
    "resolve_environment",
    "unset_variables",
]
