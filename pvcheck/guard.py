"""The upgrade procedure's Step-0 guard: find its section, confirm it detects the VIP
signature in the docker journal and has a recovery action, and prove its detection command
counts the real signature (and nothing on a clean log).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass

from pvcheck.config import GuardConfig
from pvcheck.hosts import Host
from pvcheck.records import Check, Status
from pvcheck.statefiles import read_state

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_RECOVERY = re.compile(
    r"(systemctl\s+restart\s+docker|service\s+docker\s+restart|restart docker)", re.I
)

SIGNATURE_SAMPLE = (
    'time="2026-06-10T03:12:44.512305123Z" level=error msg="Failed allocation for service '
    'x7k2m9q0" error="could not find an available IP while allocating VIP" '
    "module=node/agent/taskmanager\n"
)
CLEAN_SAMPLE = (
    'time="2026-06-10T03:12:44.512305123Z" level=info msg="Loading containers: done."\n'
    'time="2026-06-10T03:12:45.000000000Z" level=warning msg="Error getting v2 registry"\n'
)


@dataclass(frozen=True)
class GuardSection:
    heading: str
    line: int
    text: str


def find_section(text: str, marker: str) -> GuardSection | None:
    """Pure: the section whose heading starts with the marker ("0", "0.", "Step 0", "Step-0")."""
    lines = text.splitlines()
    want = re.compile(rf"^(step[\s-]*)?{re.escape(marker)}\b", re.I)
    for i, line in enumerate(lines):
        match = _HEADING.match(line)
        if match and want.match(match.group(2).strip()):
            level = len(match.group(1))
            body = []
            for nxt in lines[i + 1 :]:
                h = _HEADING.match(nxt)
                if h and len(h.group(1)) <= level:
                    break
                body.append(nxt)
            return GuardSection(match.group(2).strip(), i + 1, "\n".join(body))
    return None


def detection_pipeline(section: GuardSection, signature: str) -> str | None:
    """Pure: the section's command line that greps the docker journal for (part of) the
    signature, e.g. `journalctl -u docker --since "26 hours ago" | grep -c "..."`."""
    for line in section.text.splitlines():
        if "grep" not in line or "|" not in line:
            continue
        grep = grep_argv(line)
        if grep and grep[-1] in signature:
            return line.strip()
    return None


def grep_argv(pipeline: str) -> list[str] | None:
    """Pure: the grep stage of a pipeline as an argument list (never run through a shell)."""
    stage = pipeline.rsplit("|", 1)[-1].strip()
    try:
        argv = shlex.split(stage)
    except ValueError:
        return None
    return argv if argv and argv[0] == "grep" and len(argv) >= 2 else None


def count_with(argv: list[str], sample: str, timeout_s: float = 10) -> int | None:
    """Run a detection command with the sample log on stdin; the count it prints, or None."""
    out = subprocess.run(
        argv, input=sample, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    numbers = re.findall(r"\d+", out.stdout)
    return int(numbers[-1]) if numbers else None


def check_guard(cfg: GuardConfig, host: Host | None = None) -> tuple[list[Check], list[str] | None]:
    """Checks of the guard file; also returns the detection argv (for the lab canary). The
    detection runs where the procedure runs it: on the target host."""
    where = str(cfg.file)
    text = read_state(cfg.file)
    if text is None:
        return [Check("guard.section", "M2", Status.FAIL, f"{where} exists", "file missing")], None
    section = find_section(text, cfg.section)
    if section is None:
        return [
            Check(
                "guard.section",
                "M2",
                Status.FAIL,
                f"a section {cfg.section!r} in {where}",
                "no such heading",
            )
        ], None
    checks = [
        Check(
            "guard.section",
            "M2",
            Status.PASS,
            f"a section {cfg.section!r} in {where}",
            f"line {section.line}: {section.heading}",
        )
    ]
    pipeline = detection_pipeline(section, cfg.signature)
    argv = cfg.detect_command or (grep_argv(pipeline) if pipeline else None)
    if argv is not None and host is not None:
        argv = host.argv(argv)
    if argv is None:
        checks.append(
            Check(
                "guard.detects",
                "M2",
                Status.FAIL,
                "a journal grep for the VIP signature",
                "no detection command in the section",
            )
        )
    else:
        hit, clean = count_with(argv, SIGNATURE_SAMPLE), count_with(argv, CLEAN_SAMPLE)
        ok = bool(hit) and clean == 0
        checks.append(
            Check(
                "guard.detects",
                "M2",
                Status.PASS if ok else Status.FAIL,
                "count > 0 on a log with the signature, 0 on a clean log",
                f"{hit} on the signature sample, {clean} on the clean sample",
                f"detection: {pipeline or ' '.join(argv)}",
            )
        )
    recovery = _RECOVERY.search(section.text)
    checks.append(
        Check(
            "guard.recovery",
            "M2",
            Status.PASS if recovery else Status.FAIL,
            "a recovery action (restart docker) when the count is non-zero",
            recovery.group(0) if recovery else "no recovery action in the section",
        )
    )
    return checks, argv
