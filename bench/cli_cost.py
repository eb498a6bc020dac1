"""What a command-line `pvcheck run` costs against the plain runbook doing the same work on the
built-in lab (issue 25, item 8), side by side in one sitting; writes its section of
bench/RESULTS.md.

    .venv/bin/python -m bench.cli_cost [--repeat 3]

Both get no Prefect API configured, as on a fresh machine. The first pvcheck run finds no
kept Prefect API (it starts one: cold); the others reuse it (warm), alternating with the
runbook, which goes first every other time. Per run: wall seconds; CPU seconds (user+sys of
the process and the children it waited for, plus what the kept API spent meanwhile, read
from /proc); the process's peak RSS. The kept API's own resident peak is reported apart: it
is one process per Prefect home, shared by the runs, gone PVCHECK_API_KEEP_S after the last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.bench import PVCHECK, RESULTS, ROOT, replace_section, versions
from bench.labconfig import all_tiers, write_config
from pvcheck.api import KeptApi, stop_kept

HEADING = "## A CLI run against the runbook (issue 25 item 8)"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    who: str
    wall: float
    cpu: float
    rss_mb: float
    api_cpu: float = 0.0  # of `cpu`, what the kept API spent during the run


def _api_pid(home: Path) -> int | None:
    path = home / "pvcheck-api.json"
    kept = KeptApi.parse(path.read_bytes()) if path.exists() else None
    return kept.pid if kept else None


def _cpu_of(pid: int | None) -> float:
    """CPU seconds process `pid` and its waited children have spent (0 when gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime


def _peak_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(who: str, argv: list[str], env: dict[str, str], work: Path, home: Path) -> Sample:
    api_before = _api_pid(home)
    api_cpu_before = _cpu_of(api_before)
    t0 = time.monotonic()
    with open(work / f"{who}.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    assert rc == 0, f"{who} exited {rc}; see {work / f'{who}.log'}"
    api_after = _api_pid(home)
    api_cpu = _cpu_of(api_after) - (api_cpu_before if api_after == api_before else 0.0)
    cpu = usage.ru_utime + usage.ru_stime + (api_cpu if who != "runbook" else 0.0)
    return Sample(who, wall, cpu, usage.ru_maxrss / 1024, api_cpu if who != "runbook" else 0.0)


def sitting(repeat: int, work: Path, home: Path) -> tuple[list[Sample], float]:
    config = write_config(work, all_tiers)  # the recipe's four tiers, as the runbook does
    docs = work / "rb-docs"
    docs.mkdir()
    (docs / "STATUS-pvfix.md").write_text("# pvfix\n\n## DONE\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.pop("PVCHECK_API_KEEP_S", None)  # the default an operator gets
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    pvcheck = [PVCHECK, "run", "--config", str(config)]
    runbook = ["bash", str(ROOT / "bench" / "runbook.sh"), str(docs)]
    stop_kept(home)
    samples = [timed("pvcheck-cold", pvcheck, env, work, home)]
    for i in range(repeat):
        # Alternate which goes first, so drift hits both alike.
        order = [("pvcheck", pvcheck), ("runbook", runbook)]
        for who, argv in order if i % 2 == 0 else order[::-1]:
            samples.append(timed(who, argv, env, work, home))
    return samples, _peak_rss_mb(_api_pid(home))


def _median(samples: list[Sample], who: str, attr: str) -> float:
    return float(statistics.median(getattr(s, attr) for s in samples if s.who == who))


def section(samples: list[Sample], api_rss: float, repeat: int, started: datetime) -> str:
    rb_wall, rb_cpu = _median(samples, "runbook", "wall"), _median(samples, "runbook", "cpu")
    rows = [
        f"| {s.who} | {s.wall:.1f} s | {s.wall / rb_wall:.2f}x | {s.cpu:.1f} s"
        f"{f' (API {s.api_cpu:.1f} s)' if s.api_cpu else ''} | {s.cpu / rb_cpu:.2f}x | "
        f"{s.rss_mb:.0f} MB |"
        for s in samples
    ]
    warm = {a: _median(samples, "pvcheck", a) for a in ("wall", "cpu", "rss_mb")}
    cold = next(s for s in samples if s.who == "pvcheck-cold")

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return "\n".join(
        [
            HEADING,
            "",
            f"Measured {started:%Y-%m-%d %H:%M} UTC in one sitting by "
            f"`.venv/bin/python -m bench.cli_cost --repeat {repeat}` on the built-in lab "
            "(`lab/pvcheck.toml` with the recipe's four tiers); no Prefect API configured on "
            "either side. Ratios are against the runbook's median.",
            "",
            f"Machine: {versions()}",
            "",
            "| run | wall | vs runbook | CPU | vs runbook | peak RSS |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| goal | pvcheck (median of the warm runs) | cold run | |",
            "|---|---|---|---|",
            f"| wall <= 0.9x | {warm['wall'] / rb_wall:.2f}x | {cold.wall / rb_wall:.2f}x | "
            f"{met(warm['wall'] / rb_wall <= 0.9)} |",
            f"| CPU <= 3x | {warm['cpu'] / rb_cpu:.2f}x | {cold.cpu / rb_cpu:.2f}x | "
            f"{met(warm['cpu'] / rb_cpu <= 3)} |",
            f"| peak RSS <= 200 MB | {warm['rss_mb']:.0f} MB | {cold.rss_mb:.0f} MB | "
            f"{met(warm['rss_mb'] <= 200)} |",
            "",
            f"The kept Prefect API's resident peak: {api_rss:.0f} MB (one process per Prefect "
            "home, shared by every run while it lives).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="pvcheck-cli-cost-") as tmp:
        samples, api_rss = sitting(args.repeat, Path(tmp), home)
    text = section(samples, api_rss, args.repeat, started)
    RESULTS.write_text(replace_section(RESULTS.read_text(), HEADING, text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
