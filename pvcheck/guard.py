"""Stage guard (M2): the upgrade procedure's Step-0 guard. Find its section, confirm it detects
the VIP signature in the docker journal and has a recovery action, and prove its detection
command counts the real signature (and nothing on a clean log). Reading the Markdown and the
shell in it is pure; `gather` reads the file and runs the detection; `judge` checks.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass

from pvcheck.config import Config, GuardConfig
from pvcheck.errors import StateFileError
from pvcheck.procs import PLAIN_ENV, run_bounded
from pvcheck.records import VIP_SIGNATURE, Check, Family, Gate, Status, skipped
from pvcheck.seams import Seams
from pvcheck.statefiles import read_state

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")

SIGNATURE_SAMPLE = (
    'time="2026-06-10T03:12:44.512305123Z" level=error msg="Failed allocation for service '
    f'x7k2m9q0" error="{VIP_SIGNATURE}" module=node/agent/taskmanager\n'
)
CLEAN_SAMPLE = (
    'time="2026-06-10T03:12:44.512305123Z" level=info msg="Loading containers: done."\n'
    'time="2026-06-10T03:12:45.000000000Z" level=warning msg="Error getting v2 registry"\n'
)

# Shell words that start or join commands without being one.
_LEADING = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "{", "sudo"}
_CLOSING = {"fi", "done", "}", "esac"}
_SEPARATORS = {";", "&&", "||", "&", "(", ")", ";;", "\n"}
_REDIRECTS = re.compile(r"^[0-9]*[<>]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PRINTERS = {"echo", "printf", ":", "true", "cat"}
_SSH_OPTS_WITH_VALUE = set("BbcDEeFIiJLlmOopQRSWw")
MAX_NESTING = 3


@dataclass(frozen=True)
class GuardSection:
    heading: str
    line: int
    text: str


def _markdown_lines(text: str) -> list[tuple[str, bool]]:
    """Pure: each line with whether it lies inside a fenced code block (fences excluded)."""
    out, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if match and (fence is None or match.group(1) == fence):
            fence = match.group(1) if fence is None else None
            out.append((line, False))
            continue
        out.append((line, fence is not None))
    return out


def find_section(text: str, marker: str) -> GuardSection | None:
    """Pure: the section whose Markdown heading starts with the marker ("0", "0.", "Step 0",
    "Step-0"). A `# 1. reap` comment inside fenced code is not a heading."""
    lines = _markdown_lines(text)
    want = re.compile(rf"^(step[\s-]*)?{re.escape(marker)}\b", re.I)
    for i, (line, in_code) in enumerate(lines):
        match = None if in_code else _HEADING.match(line)
        if match and want.match(match.group(2).strip()):
            level = len(match.group(1))
            body = []
            for nxt, nxt_in_code in lines[i + 1 :]:
                h = None if nxt_in_code else _HEADING.match(nxt)
                if h and len(h.group(1)) <= level:
                    break
                body.append(nxt)
            return GuardSection(match.group(2).strip(), i + 1, "\n".join(body))
    return None


def code_lines(section: GuardSection) -> list[str]:
    """Pure: the section's shell lines: inside fenced code, continuations joined. Prose is
    not a command, however it reads."""
    out: list[str] = []
    pending = ""
    heredoc: str | None = None  # the delimiter while inside a here-document (its text)
    for line, in_code in _markdown_lines(section.text):
        if not in_code:
            continue
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        opened = _HEREDOC.search(line)
        if opened:
            heredoc = opened.group(2)
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _tokens(line: str) -> list[str] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: not a line pvcheck can read as a command
        return None


def _remote_command(argv: list[str]) -> str | None:
    """Pure: the command an `ssh [options] HOST COMMAND...` line runs on the host."""
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        takes_value = len(opt) == 2 and opt[1] in _SSH_OPTS_WITH_VALUE
        i += 2 if takes_value else 1
    rest = argv[i + 1 :]  # argv[i] is the host
    return " ".join(rest) if rest else None


def pipelines(line: str, depth: int = 0) -> list[list[list[str]]]:
    """Pure: the pipelines (lists of stages, each an argv) a shell line runs, including those
    nested in `$( … )` and in `ssh HOST '…'`. Echoed or printed text is not run."""
    tokens = _tokens(line)
    if tokens is None:
        return []
    out: list[list[list[str]]] = []
    stages: list[list[str]] = []
    stage: list[str] = []

    def end_stage() -> None:
        argv = _command_words(stage)
        if argv:
            stages.append(argv)
        stage.clear()

    def end_pipeline() -> None:
        end_stage()
        if stages:
            out.append(list(stages))
        stages.clear()

    for token in [*tokens, ";"]:
        if token == "|":
            end_stage()
        elif token in _SEPARATORS:
            end_pipeline()
        else:
            stage.append(token)
    nested = []
    for pipeline in out:
        for argv in pipeline:
            if argv[0] == "ssh" and depth < MAX_NESTING:
                remote = _remote_command(argv)
                if remote:
                    nested += pipelines(remote, depth + 1)
    return out + nested


def _command_words(tokens: list[str]) -> list[str]:
    """Pure: a stage's argv without leading keywords, assignments and redirections."""
    words = list(tokens)
    while words and (words[0] in _LEADING or _ASSIGNMENT.match(words[0])):
        assignment = _ASSIGNMENT.match(words[0])
        if assignment and words[0] != assignment.group(0):
            break  # `vip=value`: a plain assignment is not a command
        words.pop(0)
    argv: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
        elif _REDIRECTS.match(word) or word in (">&", "<&", ">>"):
            skip_next = word.rstrip("0123456789&") in (">", "<", ">>", ">&", "<&")
        elif word not in _CLOSING:
            argv.append(word)
    return argv


@dataclass(frozen=True)
class Detection:
    """The guard's detection: the whole pipeline as written, and its grep stage."""

    pipeline: str
    grep: list[str]


# The grep pvcheck runs (as root, with a sample log on stdin) may count and match, nothing
# else: no files to read (`-f`, operands), no output of what it read (`-o`, `-b`).
_GREP_FLAGS = {"-c", "-i", "-E", "-F", "-w", "-x", "--count", "--ignore-case"}


def _grep_pattern(argv: list[str]) -> str | None:
    """Pure: the one pattern of a grep that only reads stdin with harmless flags."""
    if argv[0] not in ("grep", "egrep", "fgrep"):
        return None
    patterns: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "-e":
            patterns.append(next(args, ""))
        elif arg.startswith("-") and arg not in _GREP_FLAGS:
            if len(arg) > 2 and arg[1] != "-" and all(f"-{c}" in _GREP_FLAGS for c in arg[1:]):
                continue  # combined short flags: -ic
            return None
        elif not arg.startswith("-"):
            patterns.append(arg)
    return patterns[0] if len(patterns) == 1 and patterns[0] else None


def find_detection(section: GuardSection, signature: str) -> Detection | None:
    """Pure: the first pipeline whose grep stage looks for (part of) the signature."""
    for line in code_lines(section):
        for pipeline in pipelines(line):
            for argv in pipeline:
                pattern = _grep_pattern(argv)
                if pattern and pattern in signature:
                    shown = " | ".join(shlex.join(a) for a in pipeline)
                    return Detection(shown, argv)
    return None


def _restarts_docker(argv: list[str]) -> bool:
    units = {"docker", "docker.service"}
    if argv[0] == "systemctl":
        return "restart" in argv and bool(units & set(argv))
    return argv[0] == "service" and argv[1:3] == ["docker", "restart"]


def find_recovery(section: GuardSection) -> str | None:
    """Pure: the executable line that restarts docker (directly or over ssh), if any."""
    for line in code_lines(section):
        for pipeline in pipelines(line):
            if any(argv[0] not in _PRINTERS and _restarts_docker(argv) for argv in pipeline):
                return line.strip()
    return None


def count_with(argv: list[str], sample: str, timeout_s: float = 10) -> int | None:
    """Run a detection command with the sample log on stdin; the count it prints, or None."""
    try:
        done = run_bounded(argv, timeout_s, sample.encode(), max_stdout=4096, env=PLAIN_ENV)
    except OSError:
        return None
    if done.rc is None:  # a hostile or hanging command: no count, never a hang
        return None
    numbers = re.findall(r"\d+", done.stdout.decode("utf-8", errors="replace"))
    return int(numbers[-1]) if numbers else None


# --- the stage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    guard: GuardConfig
    canary: bool = False  # lab only: make the real allocator log the signature, then count it
    run_id: str = ""
    image: str = ""  # the canary's image (the allocator's)
    docker_host: str = ""
    network: str = ""

    @classmethod
    def from_config(cls, cfg: Config, run_id: str, canary: bool) -> Settings | None:
        if cfg.guard is None:
            return None
        return cls(
            cfg.guard,
            canary,
            run_id,
            cfg.allocator.image,
            cfg.target.docker_host,
            cfg.network.name,
        )


@dataclass(frozen=True)
class Canary:
    refused: str | None = None  # why this engine is not the built-in lab's
    unavailable: str | None = None  # why there is nothing to run (no detection command)
    count: int = 0
    since: str = ""
    network: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Observation:
    file: str
    read_error: str | None = None  # a link, a FIFO, a huge or binary file: not read
    missing: bool = False
    section: GuardSection | None = None
    detection: Detection | None = None
    argv: list[str] | None = None  # the detection as run (on the target host)
    hit: int | None = None  # its count on a log with the signature
    clean: int | None = None  # and on a clean log
    recovery: str | None = None
    seconds: float = 0.0
    canary: Canary | None = None


def not_configured() -> Check:
    why = "no [guard] section in the config"
    return skipped(Family.GUARD.id("stage"), Gate.M2, "the guard check runs", why)


def gather(seams: Seams, settings: Settings) -> Observation:
    """Read the guard's section and run its detection where the procedure runs it: on the
    target host, with a sample log on stdin."""
    t0 = time.monotonic()
    cfg, where = settings.guard, str(settings.guard.file)
    try:
        text = read_state(cfg.file)
    except StateFileError as exc:
        return Observation(where, read_error=str(exc), seconds=time.monotonic() - t0)
    if text is None:
        return Observation(where, missing=True, seconds=time.monotonic() - t0)
    section = find_section(text, cfg.section)
    if section is None:
        return Observation(where, seconds=time.monotonic() - t0)
    detection = find_detection(section, cfg.signature)
    argv = cfg.detect_command or (detection.grep if detection else None)
    hit = clean = None
    if argv is not None:
        argv = seams.host.argv(argv)
        hit, clean = count_with(argv, SIGNATURE_SAMPLE), count_with(argv, CLEAN_SAMPLE)
    return Observation(
        where,
        section=section,
        detection=detection,
        argv=argv,
        hit=hit,
        clean=clean,
        recovery=find_recovery(section),
        seconds=time.monotonic() - t0,
    )


def gather_canary(seams: Seams, settings: Settings, argv: list[str] | None) -> Canary:
    """Lab only: never on a real host, whose Step-0 guard would restart docker on the line."""
    from pvcheck.canary import lab_engine_problem, run_canary

    problem = lab_engine_problem(seams.swarm, settings.docker_host, settings.network)
    if problem or seams.lab_engine is None:
        return Canary(refused=problem or "not the built-in lab's engine")
    if argv is None:
        return Canary(unavailable="no detection command to run")
    t0 = time.monotonic()
    count, since, net = run_canary(
        seams.lab_engine, settings.run_id, settings.image, argv, seams.logs
    )
    return Canary(None, None, count, since, net, time.monotonic() - t0)


def judge(obs: Observation, settings: Settings) -> list[Check]:
    cfg, where, t = settings.guard, obs.file, obs.seconds
    section_id = Family.GUARD.id("section")
    if obs.read_error is not None:
        expected = f"{where} exists"
        return [Check(section_id, Gate.M2, Status.ERROR, expected, "not read", obs.read_error, t)]
    if obs.missing:
        return [Check(section_id, Gate.M2, Status.FAIL, f"{where} exists", "file missing", "", t)]
    expected = f"a section {cfg.section!r} in {where}"
    if obs.section is None:
        return [Check(section_id, Gate.M2, Status.FAIL, expected, "no such heading", "", t)]
    found = f"line {obs.section.line}: {obs.section.heading}"
    checks = [Check(section_id, Gate.M2, Status.PASS, expected, found, "", t)]
    detects_id = Family.GUARD.id("detects")
    if obs.argv is None:
        checks.append(
            Check(
                detects_id,
                Gate.M2,
                Status.FAIL,
                "a journal grep for the VIP signature",
                "no detection command in the section",
                f"no grep in the section's code looks for part of {cfg.signature!r}",
                t,
            )
        )
    else:
        ok = bool(obs.hit) and obs.clean == 0
        shown = obs.detection.pipeline if obs.detection else " ".join(obs.argv)
        checks.append(
            Check(
                detects_id,
                Gate.M2,
                Status.PASS if ok else Status.FAIL,
                "count > 0 on a log with the signature, 0 on a clean log",
                f"{obs.hit} on the signature sample, {obs.clean} on the clean sample",
                f"detection: {shown}",
                t,
            )
        )
    checks.append(
        Check(
            Family.GUARD.id("recovery"),
            Gate.M2,
            Status.PASS if obs.recovery else Status.FAIL,
            "an executable line that restarts docker when the count is non-zero",
            obs.recovery or "no command in the section restarts docker",
            "",
            t,
        )
    )
    if obs.canary is not None:
        checks.append(judge_canary(obs.canary))
    return checks


def judge_canary(canary: Canary) -> Check:
    check_id = Family.GUARD.id("canary")
    expected = "the guard's detection counts > 0 in the real docker log after the canary"
    if canary.refused is not None:
        return Check(check_id, Gate.M2, Status.ERROR, "a lab engine", "refused", canary.refused)
    if canary.unavailable is not None:
        return skipped(check_id, Gate.M2, "canary", canary.unavailable)
    return Check(
        check_id,
        Gate.M2,
        Status.PASS if canary.count > 0 else Status.FAIL,
        expected,
        f"detection counted {canary.count} signature line(s) since {canary.since}",
        f"canary network {canary.network}; removed after",
        canary.seconds,
    )
