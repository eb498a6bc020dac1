"""The Builder/Adversary protocol in machine-docs: `## DONE`, `## VETO` and REVIEW's history.

Pure functions of the files' text. pvcheck writes `## DONE` only in its own `done` section and
removes only that section; a VETO is a person's and is never removed; REVIEW grows by one
dated entry per gate per review and rolls its oldest entries over to an archive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pvcheck.statefiles import FENCE as _FENCE
from pvcheck.statefiles import replace_section, sections

DONE_SECTION = "done"
_VETO = re.compile(r"^## VETO\b")
_HEADING = re.compile(r"^#{1,2} ")
MAX_VETO_CHARS = 600


@dataclass(frozen=True)
class Veto:
    """The Adversary's stop: a `## VETO` heading and the text under it."""

    path: str
    line: int
    text: str

    def quoted(self) -> str:
        return f"{self.path} line {self.line}: {self.text or '(no reason given)'}"


def person_lines(text: str, path: str) -> list[tuple[int, str | None]]:
    """(line number, line) of what a person wrote: outside pvcheck's sections and outside
    code blocks; a line inside pvcheck's sections is (number, None), a boundary. Lines are
    numbered as str.splitlines() splits them (the way sections() reads the file), and code
    fences are tracked in a person's text only, so nothing rendered from a host can open or
    close one."""
    spans = sorted(sections(text, path).values())
    out: list[tuple[int, str | None]] = []
    offset, fenced = 0, False
    for no, raw in enumerate(text.splitlines(keepends=True), 1):
        owned = any(start <= offset < end for start, end in spans)
        offset += len(raw)
        line = raw.rstrip("\r\n")
        if owned:
            out.append((no, None))
        elif _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((no, line))
    return out


def find_veto(text: str | None, path: str) -> Veto | None:
    """The first `## VETO` heading a person wrote (outside code blocks and outside pvcheck's
    sections), with its text up to the next heading or pvcheck section, on one line."""
    if not text:
        return None
    lines = person_lines(text, path)
    for i, (no, line) in enumerate(lines):
        if line is None or not _VETO.match(line):
            continue
        body = [line.removeprefix("## VETO").strip(" :—-")]
        for _, following in lines[i + 1 :]:
            if following is None or _HEADING.match(following):
                break
            body.append(following.strip())
        said = " ".join(b for b in body if b)
        if len(said) > MAX_VETO_CHARS:
            said = said[: MAX_VETO_CHARS - 1] + "…"
        return Veto(path, no, said)
    return None


def find_vetoes(*docs: tuple[str | None, str]) -> list[Veto]:
    """Every file's VETO, from (text, path) pairs."""
    return [v for text, path in docs if (v := find_veto(text, path)) is not None]


def has_own_done(text: str | None, path: str) -> bool:
    return bool(text) and DONE_SECTION in sections(text or "", path)


def without_done(text: str, path: str) -> str:
    """Pure: STATUS without pvcheck's `done` section (the blank line that came with it too);
    every other byte is kept."""
    spans = sections(text, path)
    if DONE_SECTION not in spans:
        return text
    return _cut(text, *spans[DONE_SECTION])


def _cut(text: str, start: int, end: int) -> str:
    """Pure: text without the owned block at [start, end) and the one blank line
    replace_section put before it."""
    head = text[:start]
    if head.endswith("\n\n"):
        head = head[:-1]
    return head + text[end:]


def stray_done_lines(text: str | None, path: str) -> list[int]:
    """`## DONE` lines outside pvcheck's section (written by a person): pvcheck never edits
    them, but says so when it withdraws its own."""
    if not text:
        return []
    return [no for no, line in person_lines(text, path) if (line or "").rstrip() == "## DONE"]


# REVIEW entries: one owned section per review and gate, appended in the order written.
_ENTRY = re.compile(r"^review[.-]")


def is_entry(section: str) -> bool:
    """A REVIEW entry of pvcheck's (one review, one gate; `review-M1` in older files)."""
    return bool(_ENTRY.match(section))


def entry_name(review_id: str, gate: str) -> str:
    return f"review.{review_id}.{gate}"


def append_entries(text: str, entries: dict[str, str], path: str) -> str:
    """Pure: REVIEW with the new entries appended (review ids are unique; the same review
    written again replaces its own entry in place)."""
    for name, body in entries.items():
        text = replace_section(text, name, body, path)
    return text


@dataclass(frozen=True)
class RollOver:
    kept: str  # REVIEW after the roll-over
    moved: list[str]  # whole entry blocks (markers included), oldest first, for the archive


def roll_over(text: str, path: str, max_bytes: int, gate_of: dict[str, str]) -> RollOver:
    """Pure: while REVIEW is over `max_bytes`, move its oldest entries out, always keeping
    the newest entry of each gate (what `done` reads). Text that is not an entry stays.
    `gate_of` maps an entry's name to its gate."""
    if len(text.encode("utf-8")) <= max_bytes:
        return RollOver(text, [])
    spans = sections(text, path)
    entries = [(name, span) for name, span in spans.items() if _ENTRY.match(name)]
    entries.sort(key=lambda item: item[1][0])
    newest = {gate_of.get(name, name): name for name, _ in entries}
    keep = set(newest.values())
    size = len(text.encode("utf-8"))
    moving: list[tuple[int, int]] = []
    for name, (start, end) in entries:
        if size <= max_bytes:
            break
        if name in keep:
            continue
        moving.append((start, end))
        size -= len(text[start:end].encode("utf-8"))
    moved = [text[start:end] for start, end in moving]
    kept = text
    for start, end in reversed(moving):  # from the end: earlier offsets stay valid
        kept = _cut(kept, start, end)
    return RollOver(kept, moved)


def entry_gate(text: str, path: str) -> dict[str, str]:
    """Entry name -> the gate its header names (`## M1 — …`)."""
    out = {}
    for name, (start, end) in sections(text, path).items():
        if _ENTRY.match(name):
            match = re.search(r"^## (M\d+) — ", text[start:end], re.M)
            out[name] = match.group(1) if match else name
    return out
