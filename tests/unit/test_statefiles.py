"""State files: owned sections, byte-for-byte preservation, atomic writes, append-only journal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pvcheck.errors import StateFileError
from pvcheck.protocol import has_done
from pvcheck.safeio import atomic_write
from pvcheck.statefiles import (
    append_journal,
    read_state,
    replace_section,
    section_body,
    update_sections,
)

HAND = "# STATUS\n\nMy notes — keep these.\r\nTrailing  spaces  \n"

pytestmark = pytest.mark.faults


def test_replace_section_keeps_outside_text_byte_for_byte() -> None:
    once = replace_section(HAND, "summary", "v1", "S.md")
    assert once.startswith(HAND)
    twice = replace_section(once + "\nmore notes\n", "summary", "v2", "S.md")
    assert twice.startswith(HAND) and twice.endswith("\nmore notes\n")
    assert "v1" not in twice and section_body(twice, "summary", "S.md") == "v2\n"


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        ("a\n<!-- pvcheck:begin x -->\nb\n", "not closed", 2),
        ("<!-- pvcheck:end x -->\n", "without its begin", 1),
        (
            "<!-- pvcheck:begin x -->\n<!-- pvcheck:end x -->\n<!-- pvcheck:begin x -->\n"
            "<!-- pvcheck:end x -->\n",
            "appears twice",
            3,
        ),
    ],
)
def test_malformed_sections_name_the_line(text: str, problem: str, line: int) -> None:
    with pytest.raises(StateFileError) as exc:
        replace_section(text, "x", "body", "S.md")
    assert problem in str(exc.value) and exc.value.line == line and "S.md" in str(exc.value)


def test_malformed_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "STATUS.md"
    text = "notes\n<!-- pvcheck:begin summary -->\nhalf\n"
    path.write_text(text)
    with pytest.raises(StateFileError):
        update_sections(path, "# new\n", {"summary": "x"})
    assert path.read_text() == text


def test_binary_and_huge_files_are_refused(tmp_path: Path) -> None:
    binary = tmp_path / "b.md"
    binary.write_bytes(b"abc\x00def")
    with pytest.raises(StateFileError, match="binary"):
        read_state(binary)
    huge = tmp_path / "h.md"
    with open(huge, "wb") as fh:
        fh.truncate(9 * 1024 * 1024)
    with pytest.raises(StateFileError, match="too large"):
        read_state(huge)


def test_done_inside_code_block_does_not_count() -> None:
    assert has_done("x\n## DONE\n")
    assert not has_done("```\n## DONE\n```\n")
    assert not has_done("### DONE later\n")
    assert not has_done(None)


def test_atomic_write_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "STATUS.md"
    path.write_text("old\n")

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StateFileError, match=r"STATUS\.md: cannot write: No space left"):
        atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["STATUS.md"]  # no temp file left


def test_a_seed_is_written_once_and_never_through_a_link(tmp_path: Path) -> None:
    # The lab's STATUS-pvfix: created when absent, a person's file there is left alone.
    from pvcheck.statefiles import seed_state

    path = tmp_path / "docs" / "STATUS-pvfix.md"
    seed_state(path, "# STATUS\n\n## DONE\n")
    assert path.read_text() == "# STATUS\n\n## DONE\n"
    path.write_text("by hand\n")
    seed_state(path, "# STATUS\n\n## DONE\n")
    assert path.read_text() == "by hand\n"
    dangling = tmp_path / "docs" / "STATUS-other.md"
    dangling.symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(StateFileError, match="symbolic link"):
        seed_state(dangling, "x\n")
    assert not (tmp_path / "elsewhere.md").exists()


def test_journal_only_grows(tmp_path: Path) -> None:
    path = tmp_path / "JOURNAL.md"
    append_journal(path, "# JOURNAL\n", "## one\n- a")
    first = path.read_text()
    path.write_text(first + "hand-written, no newline")
    append_journal(path, "# JOURNAL\n", "## two\n- b")
    text = path.read_text()
    assert text.startswith(first + "hand-written, no newline\n")
    assert text.count("# JOURNAL") == 1 and text.endswith("## two\n- b\n")


def test_docs_lock_serializes_writers(tmp_path: Path) -> None:
    from pvcheck.statefiles import docs_lock
    from tests.helpers import held_in_another_process

    held = held_in_another_process(
        "from pvcheck.statefiles import docs_lock", "docs_lock(Path(sys.argv[1]))", tmp_path
    )
    busy = pytest.raises(StateFileError, match=r"\.pvcheck\.lock: another pvcheck process held it")
    with held, busy, docs_lock(tmp_path, timeout_s=0.5):
        pass
    with docs_lock(tmp_path, timeout_s=5):  # released when its holder died
        pass


def test_history_rolls_its_oldest_records_over_keeping_what_the_trend_reads(
    tmp_path: Path,
) -> None:
    from pvcheck.history import read_history
    from pvcheck.statefiles import HISTORY_KEEP, append_history

    history, archive = tmp_path / "HISTORY-x.jsonl", tmp_path / "HISTORY-x.archive.jsonl"
    pad = "p" * 1200  # ~1.2 KB a record: past the roll-over size after some 850 runs
    total = 1000
    moved = [
        append_history(history, {"run_id": f"r{i}", "pad": pad}, archive) for i in range(total)
    ]
    assert len([m for m in moved if m]) == 1  # rolled once, back to HISTORY_KEEP records
    kept = [json.loads(line)["run_id"] for line in history.read_text().splitlines()]
    old = [json.loads(line)["run_id"] for line in archive.read_text().splitlines()]
    assert old + kept == [f"r{i}" for i in range(total)]  # none lost, none twice, in order
    assert len(kept) == HISTORY_KEEP + moved[::-1].index(max(moved))  # and what came after
    assert [r["run_id"] for r in read_history(history, limit=3)] == [
        f"r{total - 3}",
        f"r{total - 2}",
        f"r{total - 1}",
    ]


def test_past_its_bound_the_journal_gets_headings_and_is_never_rewritten(tmp_path: Path) -> None:
    from pvcheck.evidence import add_journal_entry
    from pvcheck.statefiles import DocsPaths

    paths = DocsPaths(tmp_path, "x", journal_max_bytes=4096)
    theirs = "# JOURNAL — x\n\n## 2026-12-01 — the Builder's note\n\n" + "w" * 5000 + "\n"
    paths.journal.write_text(theirs)
    before = paths.journal.stat().st_ino
    entry = "## 2026-12-05T01:00Z — run `pv-1`: PASS\n\n- Gates: M1 PASS, M2 PASS\n"
    add_journal_entry(paths, "# JOURNAL — x\n", entry)
    text = paths.journal.read_text()
    assert text.startswith(theirs)  # appended to, never rewritten
    assert paths.journal.stat().st_ino == before
    assert text[len(theirs) :].strip().splitlines() == [
        "## 2026-12-05T01:00Z — run `pv-1`: PASS",
        "",
        "- Full entry in `JOURNAL-x.runs.md` (this journal has passed 4 KiB, "
        "`docs.journal_max_kb`).",
    ]
    runs = paths.journal_runs.read_text()
    assert runs.startswith("# JOURNAL runs — x") and runs.rstrip().endswith("M2 PASS")
    # Under the bound: the whole entry goes to JOURNAL, as before.
    small = DocsPaths(tmp_path / "small", "x")
    add_journal_entry(small, "# JOURNAL — x\n", entry)
    assert "- Gates: M1 PASS, M2 PASS" in small.journal.read_text()
    assert not small.journal_runs.exists()


def test_a_history_larger_than_a_markdown_file_may_be_rolls_instead_of_failing(
    tmp_path: Path,
) -> None:
    """A HISTORY grown before the roll-over existed (past the 8 MiB a Markdown state file may
    have, under HISTORY's own 16 MiB) must roll, not stop the run's evidence."""
    from pvcheck.statefiles import HISTORY_KEEP, MAX_STATE_BYTES, append_history

    history, archive = tmp_path / "HISTORY-x.jsonl", tmp_path / "HISTORY-x.archive.jsonl"
    line = json.dumps({"run_id": "old", "pad": "p" * 1000}) + "\n"
    history.write_text(line * (MAX_STATE_BYTES // len(line) + 100))
    moved = append_history(history, {"run_id": "new"}, archive)
    assert moved > 0 and len(history.read_text().splitlines()) == HISTORY_KEEP
    assert history.read_text().splitlines()[-1] == '{"run_id": "new"}'
