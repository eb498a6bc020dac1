"""The documentation stays true: docs/config.md is what the config model generates, every
config field is described, the README stays short and every relative link resolves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from pvcheck import config
from pvcheck.configref import REGENERATE, reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250
FRESH_MACHINE = (
    "bash .ci/bootstrap && .venv/bin/pvcheck lab up && .venv/bin/pvcheck run --config "
    "lab/pvcheck.toml --json out/report.json --junit out/junit.xml\n"
    "bash .ci/bootstrap && .venv/bin/python -m pytest\n"
)


def test_config_reference_is_what_the_model_generates() -> None:
    written = (DOCS / "config.md").read_text(encoding="utf-8")
    assert written == reference_markdown(), (
        f"docs/config.md is out of date with pvcheck/config.py; regenerate it: {REGENERATE}"
    )


def test_the_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    from pvcheck.app.cli import main

    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == reference_markdown()


def _sections(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for info in model.model_fields.values():
        for tp in _types(info.annotation):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from _sections(tp)


def _types(annotation: object) -> Iterator[object]:
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types(arg)


def test_every_config_field_has_a_description() -> None:
    undescribed = [
        f"{model.__name__}.{name}"
        for model in {*_sections(config.Config)}
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not undescribed, (
        f"fields without Field(description=...): {sorted(undescribed)}; "
        f"then regenerate: {REGENERATE}"
    )


def test_every_section_class_is_reached_from_the_config() -> None:
    reached = {*_sections(config.Config)}
    defined = {
        obj
        for obj in vars(config).values()
        if isinstance(obj, type) and issubclass(obj, config.Section) and obj is not config.Section
    }
    assert defined <= reached, (
        f"not in the reference: {sorted(m.__name__ for m in defined - reached)}"
    )


def test_the_readme_is_short_and_starts_with_the_fresh_machine_commands() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block == FRESH_MACHINE


LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _relative_links(path: Path) -> Iterator[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, mailto:, or an anchor in the same page
        yield target


@pytest.mark.parametrize(
    "page",
    [README, *sorted(DOCS.glob("*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_relative_link_points_to_a_file(page: Path) -> None:
    broken = [
        target
        for target in _relative_links(page)
        if not (page.parent / target.split("#", 1)[0]).exists()
    ]
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_docs_folder_has_pages() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"config.md", "architecture.md", "protocol.md", "operations.md"} <= names
