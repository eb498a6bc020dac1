"""Safe reading and writing of the machine-docs state files: the one place a file in the docs
folder is written (what goes in it is pvcheck.evidence's; the rules, pvcheck.protocol's).

pvcheck owns only the text between `<!-- pvcheck:begin NAME -->` and `<!-- pvcheck:end NAME -->`;
everything else is kept byte for byte. Writes are atomic (temp file + fsync + rename), the
journal, HISTORY and the REVIEW archive are only appended to, and a malformed file is reported
with its line and left alone. Links, FIFOs and files others than root could change are
refused (pvcheck.safeio).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvcheck.errors import StateFileError
from pvcheck.masking import redact
from pvcheck.safeio import append, atomic_write, open_regular, read_capped, require_root_only

MAX_STATE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class DocsPaths:
    """Every file pvcheck keeps in the docs folder for one phase: the one place names are made."""

    folder: Path
    phase: str
    review_max_bytes: int = 256 * 1024  # REVIEW's roll-over bound (docs.review_max_kb)
    journal_max_bytes: int = 512 * 1024  # past it, run entries go to journal_runs

    def _file(self, kind: str, suffix: str = "md") -> Path:
        return self.folder / f"{kind}-{self.phase}.{suffix}"

    @property
    def status(self) -> Path:
        return self._file("STATUS")

    @property
    def backlog(self) -> Path:
        return self._file("BACKLOG")

    @property
    def journal(self) -> Path:
        return self._file("JOURNAL")

    @property
    def review(self) -> Path:
        return self._file("REVIEW")

    @property
    def review_archive(self) -> Path:
        """Older REVIEW entries, moved here when REVIEW outgrows its bound; only appended to."""
        return self.folder / f"REVIEW-{self.phase}.archive.md"

    @property
    def journal_runs(self) -> Path:
        """pvcheck's full JOURNAL entries once JOURNAL has passed its bound (JOURNAL then gets
        one heading per entry, pointing here); only appended to."""
        return self.folder / f"JOURNAL-{self.phase}.runs.md"

    @property
    def history(self) -> Path:
        return self._file("HISTORY", "jsonl")

    @property
    def history_archive(self) -> Path:
        """HISTORY's older records, moved here when it outgrows HISTORY_KEEP; only appended to."""
        return self.folder / f"HISTORY-{self.phase}.archive.jsonl"

    @property
    def trend(self) -> Path:
        return self._file("TREND", "svg")

    @property
    def report(self) -> Path:
        """The latest run's JSON report: the numbers a review compares with the host."""
        return self._file("REPORT", "json")

    def precondition_status(self, phase: str) -> Path:
        return self.folder / f"STATUS-{phase}.md"

    @property
    def owned(self) -> list[Path]:
        """Every file pvcheck writes here: what a docs commit may contain, and nothing else."""
        return [
            self.status,
            self.backlog,
            self.journal,
            self.review,
            self.review_archive,
            self.history,
            self.trend,
            self.report,
        ]


def repo_root(folder: Path) -> Path | None:
    """The git work tree the docs folder lies in (the nearest parent holding `.git`), or None.
    Read from the file system only: no git runs to draw a claim's HOW commands."""
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate / ".git"):
            return candidate
    return None


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MARKER = re.compile(rf"^<!-- pvcheck:(begin|end) ({_NAME.pattern}) -->$")
FENCE = re.compile(r"^\s*(```|~~~)")


def read_state(path: Path) -> str | None:
    """The file's text, None when it does not exist; refuses links, FIFOs, huge or binary
    files."""
    data = read_capped(path, MAX_STATE_BYTES)
    if data is None:
        return None
    if b"\x00" in data:
        raise StateFileError(str(path), "binary content (NUL byte); not a Markdown state file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StateFileError(str(path), "not valid UTF-8", line) from None


# Characters str.splitlines() breaks on besides "\n": one in a harness's text (a reason, a
# step name) would split an owned section's marker line and corrupt the file for every
# later run. Rendered text never carries them.
_LINE_BREAKS = dict.fromkeys(map(ord, "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), " ")


def one_line_breaks(text: str) -> str:
    """Pure: text whose only line break is "\n"."""
    return text.translate(_LINE_BREAKS)


def sections(text: str, path: str) -> dict[str, tuple[int, int]]:
    """Owned section name -> (offset of begin marker line, offset just past end marker line)."""
    found: dict[str, tuple[int, int]] = {}
    open_name: str | None = None
    open_at = open_line = 0
    offset = 0
    for no, line in enumerate(text.splitlines(keepends=True), 1):
        match = _MARKER.match(line.rstrip("\r\n"))
        if match:
            kind, name = match.groups()
            if kind == "begin":
                if open_name is not None:
                    raise StateFileError(path, f"section {open_name!r} is not closed", open_line)
                if name in found:
                    raise StateFileError(path, f"section {name!r} appears twice", no)
                open_name, open_at, open_line = name, offset, no
            else:
                if name != open_name:
                    raise StateFileError(path, f"end of section {name!r} without its begin", no)
                found[name] = (open_at, offset + len(line))
                open_name = None
        offset += len(line)
    if open_name is not None:
        raise StateFileError(path, f"section {open_name!r} is not closed", open_line)
    return found


def section_body(text: str, name: str, path: str) -> str | None:
    spans = sections(text, path)
    if name not in spans:
        return None
    start, end = spans[name]
    block = text[start:end].splitlines(keepends=True)
    return "".join(block[1:-1])


def replace_section(text: str, name: str, body: str, path: str) -> str:
    """Pure: text with section `name` set to body (appended at the end when absent)."""
    if not _NAME.fullmatch(name):
        # The marker is made from the name: one sections() could not read back, or one that
        # breaks the line, would corrupt the file for every later run.
        raise ValueError(f"not a section name: {name!r}")
    if not body.endswith("\n"):
        body += "\n"
    block = f"<!-- pvcheck:begin {name} -->\n{body}<!-- pvcheck:end {name} -->\n"
    spans = sections(text, path)
    if name in spans:
        start, end = spans[name]
        return text[:start] + block + text[end:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + block


def written_body(body: str) -> str:
    """A section's body as update_sections writes it (secrets masked, one kind of line break)."""
    return one_line_breaks(redact(body))


def section_digest(body: str) -> str:
    """What a run records of a section it wrote, so a review can tell a hand edit: sha256 of
    the body as written, line breaks as LF (an editor that turns them into CRLF edits nothing)."""
    return hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest()


def update_sections(path: Path, header: str, bodies: dict[str, str]) -> None:
    """Set owned sections of a state file (created with `header` when new), atomically."""
    text = read_state(path)
    new = header if text is None else text
    for name, body in bodies.items():
        new = replace_section(new, name, written_body(body), str(path))
    if new != text:
        atomic_write(path, new)


def write_whole(path: Path, text: str) -> None:
    """Replace a state file atomically: one pvcheck writes whole (REPORT, TREND), or one a
    pure function of its text changed (STATUS, REVIEW: every byte not pvcheck's kept)."""
    atomic_write(path, text)


def append_only(path: Path, text: str) -> None:
    """Append to a file that only grows (the REVIEW archive)."""
    append(path, text.encode("utf-8"))


HISTORY_KEEP = 400  # records HISTORY keeps: the trend reads 30, a reviewer a year of nights
HISTORY_ROLL_BYTES = 1024 * 1024  # HISTORY is looked at for a roll-over only past this
MAX_HISTORY_BYTES = 16 * 1024 * 1024  # read past this is refused (an older, unrolled file fits)


def append_history(path: Path, record: dict[str, Any], archive: Path) -> int:
    """Append one run's HISTORY record: one JSON line, masked. Past HISTORY_ROLL_BYTES its
    oldest records move to `archive` (appended there first: a crash in between duplicates a
    record, never loses one), keeping the newest HISTORY_KEEP. Returns how many moved."""
    append(path, (redact(json.dumps(record, sort_keys=True)) + "\n").encode("utf-8"))
    if os.stat(path, follow_symlinks=False).st_size <= HISTORY_ROLL_BYTES:
        return 0
    # Read with HISTORY's own cap, not a Markdown file's: a HISTORY grown before roll-over
    # existed (up to MAX_HISTORY_BYTES) must roll, not stop the run's evidence.
    data = read_capped(path, MAX_HISTORY_BYTES) or b""
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if len(lines) <= HISTORY_KEEP:
        return 0
    old, kept = lines[:-HISTORY_KEEP], lines[-HISTORY_KEEP:]
    append_only(archive, "".join(old))
    write_whole(path, "".join(kept))
    return len(old)


def seed_state(path: Path, text: str) -> None:
    """Create a state file with `text` unless something is there already (a dangling link
    there is refused, not followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        atomic_write(path, text)


def append_journal(path: Path, header: str, entry: str) -> None:
    """Append one entry; the journal is never rewritten. A torn last line is closed first."""
    existing = read_state(path)
    chunk = ""
    if existing is None:
        chunk = header
    elif existing and not existing.endswith("\n"):
        chunk = "\n"
    chunk += ("\n" if (existing or chunk) else "") + one_line_breaks(redact(entry)).rstrip("\n")
    append(path, (chunk + "\n").encode("utf-8"))


@contextlib.contextmanager
def docs_lock(folder: Path, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialize pvcheck processes writing one machine-docs folder (run, review, done)."""
    path = folder / ".pvcheck.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        require_root_only(folder, "the machine-docs folder")
        fh = os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT), "r+")
    except StateFileError:
        raise
    except OSError as exc:
        raise StateFileError(
            str(path), f"cannot open the folder lock: {exc.strerror or exc}"
        ) from None
    deadline = time.monotonic() + timeout_s
    with fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateFileError(
                        str(path), f"another pvcheck process held it for {timeout_s:g}s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
