"""BACKLOG's one model: both sections read by one parser, numbered by one rule."""

from __future__ import annotations

from itertools import islice

from pvcheck.backlog import BUILD_SECTION, FINDINGS_SECTION, numbering, parse_backlog
from pvcheck.statefiles import replace_section

BUILD = (
    "- [x] **B1** `svc.a` (M1): expected 1/1; found 0/1. — passing @t\n"
    "- [ ] **B3** `route.b` (M1): expected 200; found 502.\n"
)
FINDINGS = "### A2 [adversary] leak\n<!-- key: leak:x -->\n**Status:** OPEN (found @t)\nRepro: ls\n"


def test_one_parser_reads_both_sections_and_nothing_outside_them() -> None:
    text = "# BACKLOG\n\n- [ ] **B9** `by.hand` outside pvcheck's sections\n"
    text = replace_section(text, BUILD_SECTION, BUILD, "B")
    text = replace_section(text, FINDINGS_SECTION, FINDINGS, "B")
    backlog = parse_backlog(text, "B")
    assert [(i.num, i.check_id, i.done) for i in backlog.build] == [
        ("B1", "svc.a", True),
        ("B3", "route.b", False),
    ]
    assert [(i.num, i.key, i.status, i.repro) for i in backlog.findings] == [
        ("A2", "leak:x", "OPEN", "ls")
    ]
    assert parse_backlog(None, "B").build == [] and parse_backlog("", "B").findings == []


def test_numbers_count_on_from_the_highest_and_are_never_reused() -> None:
    assert list(islice(numbering("B", ["B1", "B3"]), 2)) == ["B4", "B5"]
    assert next(numbering("A", [])) == "A1"
