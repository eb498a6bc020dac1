"""BACKLOG: one model of the two sections pvcheck keeps there, with one parser and one
numbering rule.

`build-backlog` holds a `B` item per failing check (one per check id, never one per run),
ticked when the check passes again and re-opened when it fails again; `adversary-findings`
holds an `A` item per review finding, FIXED when no longer reproducible and re-opened when
found again. Pure; pvcheck.evidence writes the file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pvcheck.records import Check, Status
from pvcheck.report import Report
from pvcheck.reviewrecord import Finding
from pvcheck.statefiles import section_body

BUILD_SECTION = "build-backlog"
FINDINGS_SECTION = "adversary-findings"

_ITEM = re.compile(r"^- \[(?P<done>[ x])\] \*\*(?P<num>B\d+)\*\* `(?P<id>[^`]+)`(?P<rest>.*)$")
_FINDING = re.compile(r"^### (A\d+) \[adversary\] (.*)$")
_KEY = re.compile(r"^<!-- key: (.+) -->$")
_STATE = re.compile(r"^\*\*Status:\*\* (OPEN|FIXED)(.*)$")


@dataclass
class BuildItem:
    """A failing check in the build backlog: one line of BACKLOG, kept whole."""

    num: str
    check_id: str
    done: bool
    text: str


@dataclass
class FindingItem:
    """An Adversary finding: a heading, its key, its status and how to reproduce it."""

    num: str
    key: str
    title: str
    status: str  # OPEN | FIXED
    note: str  # text after the status (when fixed)
    repro: str


@dataclass(frozen=True)
class Backlog:
    build: list[BuildItem]
    findings: list[FindingItem]


def parse_backlog(text: str | None, path: str) -> Backlog:
    """Pure: the items of both of pvcheck's sections (none of a section not there yet)."""
    return Backlog(
        _build_items(section_body(text or "", BUILD_SECTION, path)),
        _finding_items(section_body(text or "", FINDINGS_SECTION, path)),
    )


def _build_items(body: str | None) -> list[BuildItem]:
    items = []
    for line in (body or "").splitlines():
        m = _ITEM.match(line)
        if m:
            items.append(BuildItem(m["num"], m["id"], m["done"] == "x", line))
    return items


def _finding_items(body: str | None) -> list[FindingItem]:
    items: list[FindingItem] = []
    for line in (body or "").splitlines():
        head = _FINDING.match(line)
        if head:
            items.append(FindingItem(head.group(1), "", head.group(2), "OPEN", "", ""))
            continue
        if not items:
            continue
        key, state = _KEY.match(line), _STATE.match(line)
        if key:
            items[-1].key = key.group(1)
        elif state:
            items[-1].status, items[-1].note = state.group(1), state.group(2)
        elif line.startswith("Repro: "):
            items[-1].repro = line.removeprefix("Repro: ")
    return items


def numbering(prefix: str, taken: Iterable[str]) -> Iterator[str]:
    """The numbering rule of both sections: new items count on from the highest number the
    section holds (`B3` after `B1`, `B2`), so a number is never reused, not even a fixed
    item's."""
    last = max((int(num[1:]) for num in taken), default=0)
    return (f"{prefix}{n}" for n in itertools.count(last + 1))


def merge_build(items: list[BuildItem], report: Report) -> list[BuildItem]:
    """Pure: one item per failing check id (never one per run); fixed ones get ticked."""
    failing = {c.id: c for c in report.failing}
    seen = {i.check_id for i in items}
    out = []
    for item in items:
        if item.check_id in failing and item.done:
            item = _build_item(item.num, failing[item.check_id], report)
        elif item.check_id not in failing and not item.done and _ran(report, item.check_id):
            ticked = item.text.replace("- [ ]", "- [x]", 1)
            item = BuildItem(
                item.num, item.check_id, True, f"{ticked} — passing @{report.finished_at}"
            )
        out.append(item)
    nums = numbering("B", (i.num for i in items))
    for check in report.failing:
        if check.id not in seen:
            out.append(_build_item(next(nums), check, report))
    return out


def _ran(report: Report, check_id: str) -> bool:
    return any(c.id == check_id and c.status == Status.PASS for c in report.checks)


def _build_item(num: str, check: Check, report: Report) -> BuildItem:
    text = (
        f"- [ ] **{num}** `{check.id}` ({check.gate}): expected {check.expected}; "
        f"found {check.found}. {check.detail} — seen in run {report.run_id} @{report.finished_at}"
    )  # one line when rendered (one_line), like every value
    return BuildItem(num, check.id, False, text)


def merge_findings(items: list[FindingItem], found: list[Finding], when: str) -> list[FindingItem]:
    """Pure: a finding found again is kept once (re-opened if it was fixed); one no longer
    reproducible is marked FIXED; a new one gets the next A-number."""
    now = {f.key: f for f in found}
    out = []
    for item in items:
        if item.key in now:
            f = now[item.key]
            item = FindingItem(
                item.num, item.key, f.title, "OPEN", f" (seen again @{when})", f.repro
            )
        elif item.status == "OPEN":
            item = FindingItem(
                item.num,
                item.key,
                item.title,
                "FIXED",
                f" @{when}: no longer reproducible",
                item.repro,
            )
        out.append(item)
    known = {i.key for i in items}
    nums = numbering("A", (i.num for i in items))
    for f in found:
        if f.key not in known:
            out.append(
                FindingItem(next(nums), f.key, f.title, "OPEN", f" (found @{when})", f.repro)
            )
            known.add(f.key)
    return out
