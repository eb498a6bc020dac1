"""Preparing a recipe's compose file for `docker stack deploy`, step by step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pvcheck.compose.confine import Confinement, confine, resolve_environment
from pvcheck.compose.interpolate import escape_dollars, interpolate, missing_variables
from pvcheck.compose.labels import absolutize_files, inject_labels
from pvcheck.compose.yamlio import dump_compose, load_compose
from pvcheck.errors import ConfigError


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
    missing = missing_variables(doc, env, where)
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
