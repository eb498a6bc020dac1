"""A recipe-CI harness's results.json: read (locally, or on the host through its seam) and
parsed (pure) into the tiers it reports and its own flags.

The shape is cc-ci's (lab/cc-ci-twin/FACTS.md, "results.json"; its harness writes it in
runner/harness/results.py). Schema 2 (`"schema": 2`, since 2026-06-11) is authoritative
through `rungs`: rung -> pass | fail | skip | unver over install, upgrade, backup_restore,
functional and lint; an intentional skip gives its reason in `skips.intentional[rung]`, one
that should have run is `unver` and listed in `skips.unintentional`; `flags` holds
`clean_teardown` and `no_secret_leak`; `stages` lists the steps (install, upgrade, backup,
restore, custom, lint) with their tests; `level` (0-5) summarises. Older files (schema 1 and
before) are read from `stages`, whose statuses include `error`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from pvcheck.errors import StateFileError
from pvcheck.safeio import read_capped, writable_by_others
from pvcheck.seams import HostCommands, TierResult, TierStatus

MAX_RESULTS_BYTES = 4 * 1024 * 1024
MAX_DETAIL = 300
STAGE_STATUS = {
    "pass": TierStatus.PASS,
    "fail": TierStatus.FAIL,
    "error": TierStatus.FAIL,
    "skip": TierStatus.SKIP,
    "unver": TierStatus.UNVERIFIED,
}
# A harness's step (stage) names -> the rung (tier) pvcheck judges.
STAGE_TIER = {
    "install": "install",
    "upgrade": "upgrade",
    "backup": "backup_restore",
    "restore": "backup_restore",
    "backup_restore": "backup_restore",
    "backup/restore": "backup_restore",
    "backup-restore": "backup_restore",
    "custom": "functional",
    "functional": "functional",
    "lint": "lint",
}
RUNGS = ("install", "upgrade", "backup_restore", "functional", "lint")
# Rungs a recipe can never declare not applicable: every recipe installs, and lint has no
# escape hatch in the harness.
ALWAYS_APPLY = {"install", "lint"}
_STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ResultsError(ValueError):
    """results.json is missing, too large, not JSON, or lacks the fields pvcheck reads."""


@dataclass(frozen=True)
class HarnessResults:
    tiers: list[TierResult]
    clean_teardown: bool | None  # the harness's own flag, when it gave one
    no_secret_leak: bool | None
    info: dict[str, str] = field(default_factory=dict)  # recipe, version, run_id, level, ...


def _text(value: Any, limit: int = MAX_DETAIL) -> str:
    return str(value)[:limit]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _flag(flags: Any, name: str) -> bool | None:
    value = flags.get(name) if isinstance(flags, dict) else None
    return value if isinstance(value, bool) else None


def _stages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    stages = doc.get("stages", [])
    if not isinstance(stages, list):
        raise ResultsError("results.json: 'stages' must be a list")
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ResultsError(f"results.json: stages[{i}] needs a string 'name'")
        if not isinstance(stage.get("status"), str) or stage["status"] not in STAGE_STATUS:
            raise ResultsError(
                f"results.json: stages[{i}].status must be one of {sorted(STAGE_STATUS)}"
            )
    return stages


def _tests_by_tier(stages: list[dict[str, Any]]) -> dict[str, str]:
    """Per tier, what its stages ran: `backup: 3 tests pass; restore: 2 tests fail`."""
    out: dict[str, list[str]] = {}
    for stage in stages:
        tier = STAGE_TIER.get(stage["name"].lower())
        if tier is None:
            continue
        tests = stage.get("tests")
        count = len(tests) if isinstance(tests, list) else 0
        out.setdefault(tier, []).append(f"{stage['name']}: {count} tests {stage['status']}")
    return {tier: "; ".join(parts) for tier, parts in out.items()}


def _from_rungs(doc: dict[str, Any], stages: list[dict[str, Any]]) -> list[TierResult]:
    rungs = doc.get("rungs")
    if not isinstance(rungs, dict):
        raise ResultsError("results.json: schema 2 needs a 'rungs' object")
    intentional = _object(_object(doc.get("skips")).get("intentional"))
    tests = _tests_by_tier(stages)
    tiers = []
    for rung in RUNGS:
        if rung not in rungs:
            continue
        status = rungs[rung]
        if status not in ("pass", "fail", "skip", "unver"):
            raise ResultsError(f"results.json: rungs.{rung} must be one of pass, fail, skip, unver")
        reason = _text(intentional.get(rung, "")) if status == "skip" else ""
        detail = "; ".join(p for p in (tests.get(rung, ""), reason) if p) or f"rung {status}"
        if rung == "lint" and status == "fail":
            rules = _object(doc.get("lint")).get("rules_failed")
            if isinstance(rules, list) and rules:
                detail += "; rules failed: " + ", ".join(_text(r, 20) for r in rules[:10])
        tiers.append(
            TierResult(
                rung,
                TierStatus(status),
                detail,
                not_applicable=status == "skip" and bool(reason) and rung not in ALWAYS_APPLY,
            )
        )
    return tiers


def _from_stages(stages: list[dict[str, Any]]) -> list[TierResult]:
    tiers: dict[str, TierResult] = {}
    for stage in stages:
        tier = STAGE_TIER.get(stage["name"].lower())
        if tier is None:
            continue
        status = STAGE_STATUS[stage["status"]]
        tests = stage.get("tests")
        count = len(tests) if isinstance(tests, list) else 0
        reason = _text(stage.get("reason", ""))
        result = TierResult(
            tier,
            status,
            f"{stage['name']}: {count} tests" + (f"; {reason}" if reason else ""),
            not_applicable=status == TierStatus.SKIP and bool(reason) and tier not in ALWAYS_APPLY,
        )
        # A tier's stages twice (backup, restore; or a repeat): a failure is never hidden
        # behind a pass, and a pass of one half never stands for a skip of the other.
        old = tiers.get(tier)
        if old is None or _worse(result.status, old.status):
            tiers[tier] = result
    return list(tiers.values())


_RANK = {TierStatus.PASS: 0, TierStatus.SKIP: 1, TierStatus.UNVERIFIED: 2, TierStatus.FAIL: 3}


def _worse(new: TierStatus, old: TierStatus) -> bool:
    return _RANK[new] > _RANK[old]


def results_stack(doc: dict[str, Any]) -> str | None:
    """The stack a results file names, when a harness adds one (cc-ci's schema 2 does not):
    `stack`, or an app `domain` turned into a stack name as abra does (dots become
    underscores). Anything not a docker name is ignored."""
    stack = doc.get("stack")
    if not isinstance(stack, str):
        domain = doc.get("domain")
        stack = domain.replace(".", "_") if isinstance(domain, str) else None
    return stack if stack and _STACK_NAME.fullmatch(stack) else None


def parse_results(doc: Any) -> HarnessResults:
    """Pure: what a results.json document reports (ResultsError when it is not one)."""
    if not isinstance(doc, dict):
        raise ResultsError("results.json must hold a JSON object")
    stages = _stages(doc)
    schema = doc.get("schema")
    if schema == 2 or isinstance(doc.get("rungs"), dict):
        tiers = _from_rungs(doc, stages)
    elif "stages" in doc:
        tiers = _from_stages(stages)
    else:
        raise ResultsError("results.json: neither 'rungs' (schema 2) nor 'stages'")
    flags = doc.get("flags")
    info = {
        k: _text(doc[k], 200)
        for k in ("recipe", "version", "run_id", "ref", "pr", "level", "schema")
        if doc.get(k) is not None
    }
    stack = results_stack(doc)
    if stack:
        info["stack"] = stack
    return HarnessResults(
        tiers, _flag(flags, "clean_teardown"), _flag(flags, "no_secret_leak"), info
    )


def decode_results(data: bytes, where: str) -> Any:
    """Pure: the JSON document in a results file's bytes, refused past MAX_RESULTS_BYTES."""
    if len(data) > MAX_RESULTS_BYTES:
        raise ResultsError(f"{where}: more than {MAX_RESULTS_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or a number too long to read
        raise ResultsError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ResultsError(f"{where}: nested too deeply to be a results file") from None


def read_results(path: Path, not_before: float | None = None) -> Any:
    """The local results file; as root, only one root alone could have written, in a folder
    only root can change (another user could plant a passing one where the harness writes,
    or put back an earlier run's), and written since `not_before` (this harness run's start,
    in epoch seconds): an older one is a previous run's."""
    if os.geteuid() == 0:
        why = writable_by_others(path.parent)
        if why:
            raise ResultsError(f"{path.parent} is {why}: results there could be anyone's")
    try:
        data = read_capped(path, MAX_RESULTS_BYTES, root_only=True)
    except StateFileError as exc:  # a link, a FIFO, others', or past the cap: refused unread
        raise ResultsError(str(exc)) from None
    if data is None:
        raise ResultsError(f"{path}: the harness wrote no results file")
    if not_before is not None and os.stat(path, follow_symlinks=False).st_mtime < not_before:
        raise ResultsError(f"{path}: written before this harness run started; not this run's")
    return decode_results(data, str(path))


def _levels(path: Path) -> list[Path]:
    """Every folder from / down to the file, and the file."""
    return [*reversed(path.parents), path]


def host_file_problem(stat_out: str, path: Path) -> str | None:
    """Pure: why a file on the host, by `stat -c '%u %g %a %F'` of every folder from / down
    and of itself, could be someone's other than root's (None: root's alone), as read_results
    asks of a local one: each owned by root and written by no other user or group (a sticky
    folder above its own, like /tmp, is fine: others cannot rename root's entries there), the
    folders folders and the file a regular one (never a link, a FIFO or a device). POSIX ACLs
    are not read on the host."""
    lines = stat_out.splitlines()
    names = _levels(path)
    if len(lines) != len(names):
        return "its owner could not be read"
    for name, line in zip(names, lines, strict=True):
        uid, gid, mode, kind = [*line.split(" ", 3), "", "", ""][:4]
        want = ("regular file", "regular empty file") if name == path else ("directory",)
        if kind not in want:
            return f"{name} is a {kind or 'thing of no kind'}, not a {want[0]}"
        if not (uid.isdigit() and gid.isdigit()) or not re.fullmatch(r"[0-7]{1,4}", mode):
            return f"{name}: its owner could not be read"
        bits = int(mode, 8)
        if int(uid) != 0:
            return f"{name} is owned by uid {uid}"
        sticky_ok = name not in (path, path.parent) and bits & 0o1000
        if (bits & 0o002 and not sticky_ok) or (bits & 0o020 and int(gid) != 0):
            return f"{name} is writable by others (mode {mode}, group {gid})"
    return None


def fetch_results(host: HostCommands, path: Path) -> Any:
    """results.json from the host, read with the same size bound as a local one, and only
    when root alone could have written it there (host_file_problem): a harness's results are
    root's, in root's folders."""
    return decode_results(fetch_results_bytes(host, path), results_where(host, path))


def results_where(host: HostCommands, path: Path) -> str:
    """How a results file on the host is read, as a person would paste it."""
    return host.how(f"cat {quote(str(path))}")


def fetch_results_bytes(host: HostCommands, path: Path) -> bytes:
    where = results_where(host, path)
    levels = [str(p) for p in _levels(path)]
    rc, out, _ = host.run(["stat", "-c", "%u %g %a %F", "--", *levels], 30)
    if rc != 0:
        raise ResultsError(f"{where}: the harness wrote no results file")
    why = host_file_problem(out, path)
    if why:
        raise ResultsError(f"{where}: refused unread: {why}; it could be anyone's")
    rc, out, _ = host.run(["head", "-c", str(MAX_RESULTS_BYTES + 1), "--", str(path)], 60)
    if rc != 0:
        raise ResultsError(f"{where}: the harness wrote no results file")
    return out.encode()
