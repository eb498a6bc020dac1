"""Safe reading and writing of the machine-docs state files.

pvcheck owns only the text between `<!-- pvcheck:begin NAME -->` and `<!-- pvcheck:end NAME -->`;
everything else is kept byte for byte. Writes are atomic (temp file + fsync + rename), the
journal is only appended to, and a malformed file is reported with its line and left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pvcheck.errors import StateFileError
from pvcheck.masking import redact

MAX_STATE_BYTES = 8 * 1024 * 1024
_MARKER = re.compile(r"^<!-- pvcheck:(begin|end) ([A-Za-z0-9_.-]+) -->$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def read_state(path: Path) -> str | None:
    """The file's text, None when it does not exist; refuses huge or binary files."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_STATE_BYTES:
        raise StateFileError(str(path), f"too large ({size} bytes > {MAX_STATE_BYTES})")
    data = path.read_bytes()
    if b"\x00" in data:
        raise StateFileError(str(path), "binary content (NUL byte); not a Markdown state file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StateFileError(str(path), "not valid UTF-8", line) from None


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line not inside a fenced code block."""
    out, fenced = [], False
    for no, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((no, line))
    return out


def has_done(text: str | None) -> bool:
    """A `## DONE` heading line, not one quoted inside a code block."""
    return bool(text) and any(line.rstrip() == "## DONE" for _, line in outside_fences(text or ""))


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


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, rename: the old file survives any error."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp_name, path.stat().st_mode & 0o7777)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        raise StateFileError(str(path), f"cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp_name:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def update_sections(path: Path, header: str, bodies: dict[str, str]) -> None:
    """Set owned sections of a state file (created with `header` when new), atomically."""
    text = read_state(path)
    new = header if text is None else text
    for name, body in bodies.items():
        new = replace_section(new, name, redact(body), str(path))
    if new != text:
        atomic_write(path, new)


def append_journal(path: Path, header: str, entry: str) -> None:
    """Append one entry; the journal is never rewritten. A torn last line is closed first."""
    existing = read_state(path)
    chunk = ""
    if existing is None:
        chunk = header
    elif existing and not existing.endswith("\n"):
        chunk = "\n"
    chunk += ("\n" if (existing or chunk) else "") + redact(entry).rstrip("\n") + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StateFileError(str(path), f"cannot append: {exc.strerror or exc}") from None


@contextlib.contextmanager
def docs_lock(folder: Path, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialize pvcheck processes writing one machine-docs folder (run, review, done)."""
    path = folder / ".pvcheck.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")  # noqa: SIM115 - closed by the `with fh` below
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
