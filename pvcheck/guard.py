"""Stage guard (M2): the upgrade procedure's Step-0 guard. Find its section, confirm its grep
looks for the VIP signature (not a fragment of it) and counts the real signature and nothing
on a realistic clean docker journal, and that a docker restart in it would execute (judged by
the shell that runs: pvcheck.shellreach). Reading the Markdown and the shell in it is pure;
`gather` reads the file and runs the detection; `judge` checks.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import time
from dataclasses import dataclass

from pvcheck.canary import lab_engine_problem, run_canary
from pvcheck.config import Config, GuardConfig, default_signature_part
from pvcheck.errors import StateFileError
from pvcheck.procs import count_with
from pvcheck.records import VIP_SIGNATURE, Check, Family, Gate, Status, skipped
from pvcheck.seams import Seams
from pvcheck.shellreach import MAX_NESTING, Reached, reachable, ssh_remote_command
from pvcheck.statefiles import read_state

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)")

# A clean `journalctl -u docker` of a single-node swarm manager, in journalctl's short format:
# a restart, containerd under dockerd, raft electing itself, the dispatcher, task clean-up,
# libnetwork's "key modified" retries, and errors that name VIPs, allocation and address
# pools without being the exhaustion. Written for pvcheck; the line shapes follow logs quoted
# in moby/moby#26990 (journal prefix, start-up), Thinstation/thinstation#724 (containerd in
# dockerd's journal), docker/for-linux#286 (module=raft), moby/moby#51054 and #32893 (key
# modified, stale sandboxes), docker/roadmap#90 (allocator state), docker/for-linux#176 (VIP
# release) and docker/for-linux#599 (address pools). Any grep that counts a line here is
# counting something other than the signature. The signature line is shaped like those in
# moby/moby#43052 and docker-archive/for-aws#104.
_NODE = "node.id=q2wz8k3m0v1x7c5n4b6h9j0lp"
_RAFT = f"module=raft {_NODE}"
_OLD, _DOCKERD = "dockerd[1702]", "dockerd[1873]"  # before and after a restart
_JOURNAL = [
    ("02:57:58", "systemd[1]", None, "Stopping Docker Application Container Engine..."),
    ("02:57:58", _OLD, "info", "msg=\"Processing signal 'terminated'\""),
    ("02:57:59", _OLD, "info", 'msg="Daemon shutdown complete"'),
    ("02:57:59", "systemd[1]", None, "docker.service: Deactivated successfully."),
    ("02:58:01", "systemd[1]", None, "Starting Docker Application Container Engine..."),
    ("02:58:01", _DOCKERD, "info", 'msg="Starting up"'),
    ("02:58:01", _DOCKERD, "info", 'msg="containerd successfully booted in 0.041207s"'),
    (
        "02:58:01",
        _DOCKERD,
        "info",
        'msg="loading plugin \\"io.containerd.grpc.v1.tasks\\"..." type=io.containerd.grpc.v1',
    ),
    ("02:58:02", _DOCKERD, "info", 'msg="Loading containers: start."'),
    (
        "02:58:02",
        _DOCKERD,
        "info",
        'msg="Default bridge (docker0) is assigned with an IP address 172.17.0.0/16. Daemon '
        'option --bip can be used to set a preferred IP address"',
    ),
    ("02:58:03", _DOCKERD, "info", 'msg="Loading containers: done."'),
    (
        "02:58:03",
        _DOCKERD,
        "info",
        'msg="Docker daemon" commit=4c9b3b0 containerd-snapshotter=false '
        "storage-driver=overlay2 version=27.5.1",
    ),
    ("02:58:03", _DOCKERD, "info", f'msg="5a0bc97e6d2f3c41 became follower at term 14" {_RAFT}'),
    (
        "02:58:03",
        _DOCKERD,
        "info",
        f'msg="5a0bc97e6d2f3c41 is starting a new election at term 14" {_RAFT}',
    ),
    ("02:58:03", _DOCKERD, "info", f'msg="5a0bc97e6d2f3c41 became leader at term 15" {_RAFT}'),
    (
        "02:58:03",
        _DOCKERD,
        "info",
        f'msg="raft.node: 5a0bc97e6d2f3c41 elected leader 5a0bc97e6d2f3c41 at term 15" {_RAFT}',
    ),
    ("02:58:04", _DOCKERD, "info", 'msg="initialized VXLAN UDP port to 4789"'),
    (
        "02:58:04",
        _DOCKERD,
        "info",
        'msg="worker q2wz8k3m0v1x7c5n4b6h9j0lp was successfully registered" '
        'method="(*Dispatcher).register"',
    ),
    ("02:58:04", _DOCKERD, "info", 'msg="Daemon has completed initialization"'),
    ("02:58:04", _DOCKERD, "info", 'msg="API listen on /run/docker.sock"'),
    ("02:58:04", "systemd[1]", None, "Started Docker Application Container Engine."),
    (
        "03:05:17",
        _DOCKERD,
        "info",
        'msg="ignoring event" container=9f1c2a7e4b3d5f60 module=libcontainerd namespace=moby '
        'topic=/tasks/delete type="*events.TaskDelete"',
    ),
    (
        "03:05:18",
        _DOCKERD,
        "warning",
        'msg="Error (Unable to complete atomic operation, key modified) deleting object '
        '[endpoint_count 2b7e9c1d0a4f6e8b], retrying...."',
    ),
    (
        "03:05:18",
        _DOCKERD,
        "info",
        'msg="Removing stale sandbox 7d3e0c9b2a1f (c41a8e5d7b90)"',
    ),
    (
        "03:05:19",
        _DOCKERD,
        "error",
        'msg="Failed to allocate network resources for node q2wz8k3m0v1x7c5n4b6h9j0lp" '
        f'error="could not find network allocator state for network r8t1y6u0" module=node {_NODE}',
    ),
    ("03:05:19", _DOCKERD, "error", 'msg="Could not parse VIP address  while releasing"'),
    (
        "03:05:19",
        _DOCKERD,
        "error",
        'msg="error deallocating vip" error="invalid CIDR address: " vip.addr= '
        "vip.network=r8t1y6u0",
    ),
    (
        "03:07:42",
        _DOCKERD,
        "error",
        'msg="Handler for POST /v1.47/networks/create returned error: could not find an '
        'available, non-overlapping IPv4 address pool among the defaults to assign to the network"',
    ),
]
_SIGNATURE_LINE = (
    "03:12:44",
    _DOCKERD,
    "error",
    f'msg="Failed allocation for service x7k2m9q0wq4d8r1n3s5t6u7v" error="{VIP_SIGNATURE}" '
    f"module=node {_NODE}",
)


def _journal(entries: list[tuple[str, str, str | None, str]]) -> str:
    """journalctl's short format; dockerd's own lines are logrus key=value records."""
    out = []
    for k, (clock, ident, level, text) in enumerate(entries):
        if level is None:
            out.append(f"Jun 10 {clock} cc-ci {ident}: {text}")
            continue
        nanos = f"{(k + 1) * 31_234_567:09d}"  # any fixed, increasing sub-second part
        record = f'time="2026-06-10T{clock}.{nanos}Z" level={level} {text}'
        out.append(f"Jun 10 {clock} cc-ci {ident}: {record}")
    return "\n".join(out) + "\n"


CLEAN_SAMPLE = _journal(_JOURNAL)
SIGNATURE_SAMPLE = _journal([*_JOURNAL, _SIGNATURE_LINE])

# Shell words that start or join commands without being one.
_LEADING = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "{", "sudo"}
_CLOSING = {"fi", "done", "}", "esac"}
_SEPARATORS = {";", "&&", "||", "&", "(", ")", ";;", "\n"}
_REDIRECTS = re.compile(r"^[0-9]*[<>]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


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


def code_blocks(section: GuardSection) -> list[list[str]]:
    """Pure: the section's fenced code blocks, each as its shell lines, without the fence's
    own indentation (as CommonMark reads them). Continuations and here-documents are the
    shell's to read (pvcheck.shellreach): a quoted delimiter's body keeps its `\\`-newlines.
    Prose is not a command, however it reads."""
    blocks: list[list[str]] = []
    out: list[str] | None = None  # the block being read
    indent = 0  # of the last fence line: a block's lines lose up to that many spaces
    for line, in_code in _markdown_lines(section.text):
        if not in_code:
            if out is not None:
                blocks.append(out)
            out, indent = None, len(line) - len(line.lstrip(" "))
            continue
        out = [] if out is None else out
        out.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
    if out is not None:
        blocks.append(out)
    return blocks


def code_lines(section: GuardSection) -> list[str]:
    """Pure: the section's shell lines, all blocks in order."""
    return [line for block in code_blocks(section) for line in block]


def _tokens(line: str) -> list[str] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: not a line pvcheck can read as a command
        return None


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
                remote = ssh_remote_command(argv)
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


def _ignores_case(argv: list[str]) -> bool:
    short = [a[1:] for a in argv[1:] if a.startswith("-") and not a.startswith("--")]
    return "--ignore-case" in argv or any("i" in flags for flags in short)


def find_detection(
    section: GuardSection, signature: str, part: str | None = None
) -> Detection | None:
    """Pure: the first grep that would run whose pattern contains `part` of the signature (by
    default its distinctive end) and that reads a pipe of the docker journal."""
    return judge_detection(section, signature, part)[0]


def judge_detection(
    section: GuardSection, signature: str, part: str | None = None
) -> tuple[Detection | None, tuple[str, ...]]:
    """Pure: the detection, and each grep for the signature that is none, with why. A pattern
    that is only a fragment of the signature, such as "I" or "VIP", counts ordinary lines too;
    a grep the shell never runs, or that reads something other than a pipe (a `<` file, a
    here-document, the script's own stdin) or another unit's journal, counts nothing real."""
    want = part or default_signature_part(signature)
    refused: list[str] = []
    for found in reachable(code_blocks(section), _is_grep):
        argv = list(found.argv)
        pattern = _grep_pattern(argv)
        if pattern is None:
            continue
        needle = want.lower() if _ignores_case(argv) else want
        if needle not in (pattern.lower() if _ignores_case(argv) else pattern):
            continue
        why = found.dead or _input_refusal(found)
        if why is None:
            shown = " | ".join(shlex.join(a) for a in (*found.upstream, found.argv))
            return Detection(shown, argv), tuple(refused)
        refused.append(f"`{_clip(found.line.strip())}`: {why}")
    return None, tuple(refused)


def _is_grep(argv: tuple[str, ...]) -> bool:
    return argv[0] in ("grep", "egrep", "fgrep")


def _input_refusal(found: Reached) -> str | None:
    """Pure: why a grep reads no docker journal; None when it reads a pipe that may carry it."""
    if found.stdin:
        return f"its grep reads stdin from `{found.stdin}`, not from the journal"
    if not found.upstream:
        return "its grep reads no pipe: it counts the script's own stdin, not the journal"
    for argv in found.upstream:
        units = _journal_units(argv)
        if "~user" in units:
            return "its input is a user's journal (`--user`), not the system's docker"
        if units and not any(_is_docker_unit(u) for u in units):
            return f"its input is the journal of {', '.join(units)}, not of docker"
    return None


def _journal_units(argv: tuple[str, ...]) -> list[str]:
    """Pure: the units a `journalctl` command (also one run over ssh) names, `~user` for a
    user's journal; none when it names none or runs no journalctl."""
    words = list(argv)
    if words[0] == "ssh":
        remote = ssh_remote_command(words)
        words = (_tokens(remote) or []) if remote else []
    starts = [k for k, w in enumerate(words) if w.rsplit("/", 1)[-1] == "journalctl"]
    if not starts:
        return []
    units: list[str] = []
    args = iter(words[starts[0] + 1 :])
    for arg in args:
        if arg in _SEPARATORS or arg == "|":
            break
        if arg in ("--unit", "--user-unit"):
            value = next(args, "")
        elif arg.startswith(("--unit=", "--user-unit=")):
            value = arg.split("=", 1)[1]
        elif arg == "--user":
            value = "~user"
        elif arg.startswith("-") and not arg.startswith("--") and "u" in arg:
            value = arg[arg.index("u") + 1 :] or next(args, "")  # -u docker, -udocker, -fu …
        else:
            continue
        units.append("~user" if arg.startswith("--user-unit") else value)
    return units


def _is_docker_unit(unit: str) -> bool:
    """docker, docker.service, or a glob journalctl would match against docker.service."""
    if unit in _DOCKER_UNITS:
        return True
    return bool(set(unit) & set("*?[")) and fnmatch.fnmatchcase("docker.service", unit)


# --- recovery ----------------------------------------------------------------------------------
# Verbs that restart a running docker: `restart`, and `try-restart` (alias `condrestart`),
# which only skips a docker that is not running (a stopped docker has no allocator to
# rebuild). Not `reload-or-restart` or `force-reload`: they reload a unit that can be
# reloaded, and docker.service's reload only sends dockerd SIGHUP (daemon.json), which leaves
# the allocator as it is.
_RESTART_VERBS = {"restart", "try-restart", "condrestart"}
_DOCKER_UNITS = {"docker", "docker.service"}
# systemctl options (systemd 252's --help) that leave a restart a restart. Every other option
# is refused: those below stop it acting, and an unknown one cannot be vouched for.
_HARMLESS_OPTIONS = {"--system", "--quiet", "-q", "--no-block", "--no-pager", "--no-ask-password"}
_HARMLESS_OPTIONS |= {"--full", "-l", "--show-transaction", "-T", "--no-legend"}
_STOPPING_OPTIONS = {
    "--dry-run": "only prints what it would do",
    "--help": "prints its help and exits",
    "-h": "prints its help and exits",
    "--version": "prints its version and exits",
    "--host": "acts on another host",
    "-H": "acts on another host",
    "--machine": "acts inside a container",
    "-M": "acts inside a container",
    "--user": "asks a user's service manager, not the system's docker",
    "--wait": "waits for docker to stop again: the guard would hang there",
    "--lines": "(--lines) takes the next word as its value",
    "-n": "(--lines) takes the next word as its value",
}


def _systemctl_refusal(argv: list[str]) -> str | None:
    """Pure: why `systemctl ARGS` would not restart docker; None when it would. The verb is
    the first word that is not an option; the units are the words after it."""
    words: list[str] = []
    args = argv[1:]
    for k, arg in enumerate(args):
        if arg == "--":
            words += args[k + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        names = [arg.split("=", 1)[0]] if arg.startswith("--") else [f"-{c}" for c in arg[1:]]
        for name in names:
            if name in _STOPPING_OPTIONS:
                return f"systemctl {name} {_STOPPING_OPTIONS[name]}"
            if name not in _HARMLESS_OPTIONS:
                return f"systemctl {name}: pvcheck cannot tell it still restarts docker"
    verb, units = (words[0], words[1:]) if words else ("", [])
    if verb not in _RESTART_VERBS:
        return f"its systemctl verb is {verb!r}, not restart or try-restart"
    if not _DOCKER_UNITS & set(units):
        return "docker (or docker.service) is not a unit it restarts"
    return None


def _restart_refusal(argv: list[str]) -> str | None:
    """Pure: why a systemctl or service command would not restart docker; None when it would."""
    if argv[0] == "service":
        if argv[1:3] == ["docker", "restart"]:
            return None
        return "only `service docker restart` restarts docker through service"
    return _systemctl_refusal(argv)


def _names_a_docker_restart(argv: tuple[str, ...]) -> bool:
    """A command to judge: systemctl or service with docker and a restart among its words."""
    words = argv[1:]
    if argv[0] not in ("systemctl", "service"):
        return False
    return any("restart" in w for w in words) and any("docker" in w for w in words)


@dataclass(frozen=True)
class Recovery:
    line: str | None  # the first line whose docker restart would run
    refused: tuple[str, ...] = ()  # each line naming a restart that would not run, and why


def judge_recovery(section: GuardSection) -> Recovery:
    """Pure: the section's docker restarts, judged by the shell that would execute: one after
    `false &&` or `true ||`, in a branch a constant condition never takes, after an
    unconditional `exit`, or with an option or verb that stops it acting does not count.
    What pvcheck cannot read is refused too, and every refusal says why."""
    line: str | None = None
    refused: list[str] = []
    for found in reachable(code_blocks(section), _names_a_docker_restart):
        why = found.dead or _restart_refusal(list(found.argv))
        if why is None:
            line = line or found.line.strip()
        else:
            refused.append(f"`{_clip(found.line.strip())}`: {why}")
    return Recovery(line, tuple(refused))


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_recovery(section: GuardSection) -> str | None:
    """Pure: the first line whose docker restart would run (directly or over ssh), if any."""
    return judge_recovery(section).line


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
    detection_refused: tuple[str, ...] = ()  # greps for the signature that detect nothing, why
    argv: list[str] | None = None  # the detection as run (on the target host)
    hit: int | None = None  # its count on a log with the signature
    clean: int | None = None  # and on a clean log
    recovery: str | None = None
    recovery_refused: tuple[str, ...] = ()  # restarts that would not run, each with why
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
    detection, detection_refused = judge_detection(section, cfg.signature, cfg.detection_part)
    argv = cfg.detect_command or (detection.grep if detection else None)
    hit = clean = None
    recovery = judge_recovery(section)
    if argv is not None:
        argv = seams.host.argv(argv)
        hit, clean = count_with(argv, SIGNATURE_SAMPLE), count_with(argv, CLEAN_SAMPLE)
    return Observation(
        where,
        section=section,
        detection=detection,
        detection_refused=detection_refused,
        argv=argv,
        hit=hit,
        clean=clean,
        recovery=recovery.line,
        recovery_refused=recovery.refused,
        seconds=time.monotonic() - t0,
    )


def gather_canary(seams: Seams, settings: Settings, argv: list[str] | None) -> Canary:
    """Lab only: never on a real host, whose Step-0 guard would restart docker on the line."""
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
                f"no grep in the section's code has a pattern containing {cfg.detection_part!r}"
                + (f"; {_not_counted(obs.detection_refused)}" if obs.detection_refused else ""),
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
            _not_counted(obs.recovery_refused),
            t,
        )
    )
    if obs.canary is not None:
        checks.append(judge_canary(obs.canary))
    return checks


def _not_counted(refused: tuple[str, ...], shown: int = 5) -> str:
    if not refused:
        return ""
    more = f"; and {len(refused) - shown} more" if len(refused) > shown else ""
    return "not counted: " + "; ".join(refused[:shown]) + more


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
