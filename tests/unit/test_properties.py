"""Property-based tests: the config loader and the state-file parser never crash on any input;
they either accept it or raise their own error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvcheck.config import parse_config
from pvcheck.errors import ConfigError, StateFileError
from pvcheck.protocol import has_done
from pvcheck.statefiles import replace_section, section_body, sections
from tests.helpers import lab_raw

SOURCE = Path("/etc/pvcheck/fuzz.toml")

toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

pytestmark = pytest.mark.faults


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), toml_values, max_size=6))
def test_config_loader_never_crashes_on_arbitrary_documents(doc: dict[str, Any]) -> None:
    try:
        parse_config(doc, SOURCE)
    except ConfigError as exc:
        assert str(exc).startswith(str(SOURCE))


sections_of_lab = st.sampled_from(
    ["target", "network", "services", "http", "logs", "allocator", "docs"]
)


@settings(max_examples=300, deadline=None)
@given(sections_of_lab, st.text(max_size=15), toml_values)
def test_one_hostile_field_in_a_valid_config_is_named(section: str, key: str, value: Any) -> None:
    raw = lab_raw()
    raw[section] = {**raw[section], key: value}
    try:
        parse_config(raw, SOURCE)
    except ConfigError as exc:
        assert str(exc).startswith(f"{SOURCE}: ")


markers = st.sampled_from(
    [
        "<!-- pvcheck:begin a -->",
        "<!-- pvcheck:end a -->",
        "<!-- pvcheck:begin b -->",
        "<!-- pvcheck:end b -->",
        "## DONE",
        "```",
        "text",
        "",
        "\r",
        "## Gate: M1 — CLAIMED, awaiting Adversary",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(markers | st.text(max_size=20), max_size=30), st.text(max_size=30))
def test_state_parser_keeps_outside_text_or_refuses(lines: list[str], body: str) -> None:
    text = "\n".join(lines)
    try:
        new = replace_section(text, "a", body, "S.md")
    except StateFileError as exc:
        assert exc.path == "S.md" and exc.line is not None and exc.line >= 1
        return
    # Whatever was outside section `a` is still there, byte for byte, and the section holds
    # the new body.
    spans = sections(text, "S.md")
    if "a" in spans:
        start, end = spans["a"]
        assert new.startswith(text[:start]) and new.endswith(text[end:])
    else:
        assert new.startswith(text.rstrip("\n") if not text.endswith("\n") else text)
    assert section_body(new, "a", "S.md") == (body if body.endswith("\n") else body + "\n")
    has_done(new)  # never raises
