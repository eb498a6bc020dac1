"""The benchmark's own reporting: each sitting rewrites its section of RESULTS.md only, and the
soak's summary names every run left unexplained or with residue."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import soak
from bench.bench import replace_section


def test_a_sitting_rewrites_its_own_section_and_keeps_the_others() -> None:
    text = "# R\n\n## A\n\nold a\n\n## B\n\nkept b\n"
    assert (
        replace_section(text, "## A", "## A\n\nnew a\n") == "# R\n\n## A\n\nnew a\n## B\n\nkept b\n"
    )
    assert (
        replace_section(text, "## B", "## B\n\nnew b\n")
        == "# R\n\n## A\n\nold a\n\n## B\n\nnew b\n"
    )
    assert replace_section(text, "## C", "## C\n") == text + "\n## C\n"


def _row(n: int, fault: str | None, rc: int | None, left: int = 0) -> soak.Row:
    return soak.Row(n, fault, 5.0 if fault else None, rc, "pass", 40.0, 110.0, 0, left, {"X": n})


def test_the_soak_counts_a_verdict_as_explained_by_its_fault() -> None:
    assert _row(1, None, 0).explained
    assert not _row(1, None, 1).explained  # a failure without a fault is never explained
    assert _row(3, "kill", -9).explained
    assert _row(6, "docs-disk-full", 2).explained
    assert not _row(6, "docs-disk-full", 0).explained  # the full disk went unnoticed
    assert _row(6, "dockerd-restart", 0).explained  # rode through it: reconnected, re-measured
    late = _row(9, "traefik-down", 0)
    assert not late.explained
    late.after_checks = True  # the fault came once the run's report was written
    assert late.explained


@pytest.mark.parametrize("bad", ["unexplained", "residue"])
def test_the_soak_summary_names_the_runs_that_went_wrong(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(soak, "versions", lambda: "test machine")
    rows = [_row(1, None, 0), _row(2, None, 0), _row(3, "kill", -9), _row(4, None, 0)]
    if bad == "unexplained":
        rows[1] = _row(2, None, 1)
    else:
        rows[2] = _row(3, "kill", -9, left=2)
    text = soak.section(rows, 4, 1, datetime(2026, 12, 5, tzinfo=UTC), 3.0)
    if bad == "unexplained":
        assert "Unexplained verdicts: **runs [2]**" in text
    else:
        assert "**left after runs [3]**" in text
    assert "| `X` | 1 | 3 | 4 |" in text
