"""The soak (issue 28): N consecutive `pvcheck run`s on the built-in lab, a fault injected at a
random moment of every third one; writes its section of bench/RESULTS.md.

    .venv/bin/python -m bench.soak [--runs 30] [--seed 28]

The faults take turns: SIGKILL of the run; dockerd restarted (SIGTERM, then started again);
Traefik scaled to 0 (back to 1 after the run); the docs folder's disk filled (the folder lives
on a tmpfs of its own for the whole soak; the filler goes after the run). Per run: exit code
and verdict, wall seconds, peak RSS, the pvcheck-labelled objects left on the engine after it
and after the next run (whose janitor reaps what a killed run left), and the size of every
state file. A verdict is explained when a run without a fault passes and a faulted one ends as
its fault should.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench import PVCHECK, RESULTS, ROOT, replace_section, versions
from bench.labconfig import write_config
from pvcheck.config import load_config
from pvcheck.lab import restart_dockerd, wait_routes
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_RUN, Swarm

HEADING = "## The soak (issue 28)"
ROWS = ROOT / "bench" / "soak-rows.jsonl"
FAULTS = ("kill", "dockerd-restart", "traefik-down", "docs-disk-full")
TRAEFIK = "lab-traefik_app"
DOCS_DISK = "64m"
# What a faulted run may end with: its exit code (a killed run has none).
EXPECTED_EXIT = {
    None: {0},
    "kill": {-9},
    # A run rides through an engine restart (it reconnects within target.reconnect_s): it may
    # pass on what it measured on the restarted engine, or fail, end unreachable or not proven.
    "dockerd-restart": {0, 1, 3, 4},
    "traefik-down": {1, 4},
    "docs-disk-full": {2},  # the evidence cannot be written: named, old files kept
}


@dataclass
class Row:
    n: int
    fault: str | None
    at_s: float | None
    rc: int | None
    verdict: str
    wall: float
    rss_mb: float
    residue: int
    residue_next: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    after_checks: bool = False  # the fault landed after the run's report was finished

    @property
    def explained(self) -> bool:
        # A fault that came once the run had finished its checks (writing its evidence,
        # sending its last logs) may leave a passing run passing.
        allowed = EXPECTED_EXIT[self.fault] | ({0} if self.after_checks else set())
        return self.rc in allowed


def residue(swarm: Swarm) -> int:
    return sum(len(v) for v in list_residue(swarm, LABEL_RUN).values())


def sizes(*folders: Path) -> dict[str, int]:
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                out[path.name] = path.stat().st_size
    return out


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / ".filler"
    with contextlib.suppress(OSError), open(filler, "wb") as fh:
        while True:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
    return filler


class Soak:
    def __init__(self, work: Path, docs: Path, seed: int) -> None:
        def docs_here(raw: dict[str, Any]) -> None:
            raw["docs"]["dir"] = str(docs)

        self.config = write_config(work, docs_here)
        self.cfg = load_config(self.config)
        self.work, self.docs = work, docs
        self.swarm = Swarm.connect("unix:///var/run/docker.sock")
        self.rand = random.Random(seed)
        self.fault_at: datetime | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        self.env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    def inject(self, fault: str, proc: subprocess.Popen[bytes], at_s: float) -> None:
        """After `at_s` seconds of the run (if it still runs), the fault."""
        deadline = time.monotonic() + at_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            time.sleep(0.1)
        self.fault_at = datetime.now(UTC)
        if fault == "kill":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        elif fault == "dockerd-restart":
            assert self.cfg.lab is not None
            restart_dockerd(self.cfg.lab)
        elif fault == "traefik-down":
            subprocess.run(["docker", "service", "scale", "-d", f"{TRAEFIK}=0"],
                           capture_output=True, check=False)  # fmt: skip
        elif fault == "docs-disk-full":
            fill(self.docs)

    def recover(self, fault: str | None) -> None:
        if fault == "traefik-down":
            subprocess.run(["docker", "service", "scale", "-d", f"{TRAEFIK}=1"],
                           capture_output=True, check=False)  # fmt: skip
        if fault == "docs-disk-full":
            (self.docs / ".filler").unlink(missing_ok=True)
        if fault in ("traefik-down", "dockerd-restart"):
            self.swarm = Swarm.connect("unix:///var/run/docker.sock", timeout_s=60)
            wait_routes(self.cfg, 120)

    def one(self, n: int, fault: str | None) -> Row:
        report = self.work / f"report-{n}.json"
        argv = [PVCHECK, "run", "--config", str(self.config), "--json", str(report)]
        at_s = round(self.rand.uniform(3, 35), 1) if fault else None
        self.fault_at = None
        t0 = time.monotonic()
        with open(self.work / "runs.log", "ab") as log:
            proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            injector = None
            if fault and at_s is not None:
                injector = threading.Thread(target=self.inject, args=(fault, proc, at_s))
                injector.start()
            _, status, usage = os.wait4(proc.pid, 0)
            if injector is not None:
                injector.join()
        wall = time.monotonic() - t0
        rc = os.waitstatus_to_exitcode(status)
        verdict, finished = ("killed" if rc < 0 else "-"), None
        with contextlib.suppress(OSError, ValueError, KeyError):
            doc = json.loads(report.read_text())
            verdict, finished = doc["verdict"], datetime.fromisoformat(doc["finished_at"])
        self.recover(fault)
        rss = round(usage.ru_maxrss / 1024)
        files = sizes(self.docs, self.cfg.target.state_dir)
        row = Row(n, fault, at_s, rc, verdict, round(wall, 1), rss, residue(self.swarm))
        row.sizes = files
        # The fault came after the run's report was finished: what it could still change is
        # only what the run did after its checks.
        row.after_checks = bool(self.fault_at and finished and self.fault_at > finished)
        with open(ROWS, "a") as out:  # the raw figures, a line per run
            out.write(json.dumps(dataclasses.asdict(row)) + "\n")
        return row


def soak(runs: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    ROWS.write_text("")
    with (
        tempfile.TemporaryDirectory(prefix="pvcheck-soak-") as tmp,
        tmpfs(Path(tmp) / "docs", DOCS_DISK) as docs,
    ):
        (docs / "STATUS-pvfix.md").write_text("# pvfix\n\n## DONE\n")
        run = Soak(Path(tmp), docs, seed)
        faults = iter(FAULTS * (runs // (3 * len(FAULTS)) + 1))
        for n in range(1, runs + 1):
            fault = next(faults) if n % 3 == 0 else None
            row = run.one(n, fault)
            if rows:
                rows[-1].residue_next = row.residue  # after this run's janitor and teardown
            rows.append(row)
            print(f"run {n}: fault {fault} rc {row.rc} {row.verdict} {row.wall}s "
                  f"{row.rss_mb}MB residue {row.residue}", flush=True)  # fmt: skip
    return rows


def _unreached(row: Row) -> str:
    """A fault due after the run had ended never came (a killed run's wall is its moment)."""
    late = row.at_s is not None and row.rc != -9 and row.at_s > row.wall
    return " (the run had ended: no fault)" if late else ""


def section(rows: list[Row], runs: int, seed: int, started: datetime, minutes: float) -> str:
    clean = [r for r in rows if r.fault is None]
    first, last = clean[:5], clean[-5:]
    files = sorted({name for r in rows for name in r.sizes})
    table = [
        f"| {r.n} | {r.fault or '-'} | {'' if r.at_s is None else f'{r.at_s:g} s'}"
        f"{' (after the checks)' if r.after_checks else ''}{_unreached(r)} | "
        f"{'-' if r.rc is None else r.rc} | {r.verdict} | {'yes' if r.explained else '**no**'} | "
        f"{r.wall:g} s | {r.rss_mb:g} MB | {r.residue} | "
        f"{'-' if r.residue_next is None else r.residue_next} |"
        for r in rows
    ]
    marks = (rows[0], rows[len(rows) // 2], rows[-1])
    growth = [
        f"| `{name}` | " + " | ".join(str(r.sizes.get(name, "-")) for r in marks) + " |"
        for name in files
    ]
    left = [r.n for r in rows if r.residue_next not in (0, None)]
    unexplained = [r.n for r in rows if not r.explained]

    def med(values: list[float]) -> float:
        return float(statistics.median(values)) if values else 0.0

    walls = f"{med([r.wall for r in first]):.1f} s -> {med([r.wall for r in last]):.1f} s"
    rss = f"{med([r.rss_mb for r in first]):.0f} MB -> {med([r.rss_mb for r in last]):.0f} MB"

    return "\n".join(
        [
            HEADING,
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC ({minutes:.0f} min) by "
            f"`.venv/bin/python -m bench.soak --runs {runs} --seed {seed}` on the built-in lab.",
            "",
            f"Machine: {versions()}",
            "",
            f"- Residue after the next run's janitor: "
            f"{'0 after every run' if not left else f'**left after runs {left}**'}.",
            f"- Unexplained verdicts: {'none' if not unexplained else f'**runs {unexplained}**'}.",
            f"- Runs without a fault, first five against last five (median): wall {walls}, "
            f"peak RSS {rss}.",
            "",
            "| run | fault | at | exit | verdict | explained | wall | peak RSS | residue after | "
            "after the next run |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *table,
            "",
            "State files (bytes) after the first run, the middle one and the last:",
            "",
            "| file | first | middle | last |",
            "|---|---|---|---|",
            *growth,
            "",
        ]
    )


def read_rows() -> list[Row]:
    rows = [Row(**json.loads(line)) for line in ROWS.read_text().splitlines() if line.strip()]
    for row, after in itertools.pairwise(rows):
        row.residue_next = after.residue  # written before the next run existed
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument(
        "--render", action="store_true", help=f"only write the section again from {ROWS.name}"
    )
    args = parser.parse_args(argv)
    started, t0 = datetime.now(UTC), time.monotonic()
    if args.render:
        rows = read_rows()
        started = datetime.fromtimestamp(ROWS.stat().st_mtime, UTC)
        minutes = sum(r.wall for r in rows) / 60
    else:
        rows = soak(args.runs, args.seed)
        minutes = (time.monotonic() - t0) / 60
    text = section(rows, args.runs, args.seed, started, minutes)
    RESULTS.write_text(replace_section(RESULTS.read_text(), HEADING, text))
    print(text)
    return 0 if all(r.explained for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
