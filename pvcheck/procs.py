"""Every command pvcheck runs: in its own session, its whole process group killed at the
deadline (a pipeline's children too, never only the first process), and its output read
within bounds: kept up to a cap, or streamed line by line, never buffered whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pvcheck import masking

MAX_OUTPUT = 16 * 1024 * 1024
# For commands that need nothing of pvcheck's environment (its secrets stay out of reach).
PLAIN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
MAX_STDERR = 64 * 1024
MAX_LINE = 64 * 1024
_CHUNK = 64 * 1024


SECRET_VARS = ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_SERVER_API_AUTH_STRING")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """pvcheck's environment for a command it runs, without the secrets it holds (the
    Prefect credentials, and any variable whose value is a masked secret, such as the
    Drone token): a harness runs recipe code, and none of it needs them."""
    secrets = masking.secrets()
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and v not in secrets}
    return {**env, **(extra or {})}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read_bounded(stream: object, cap: int, out: bytearray, over: threading.Event) -> None:
    """Read a pipe to EOF, keeping at most `cap` bytes; set `over` past it."""
    assert hasattr(stream, "read")
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return
        room = cap - len(out)
        if room > 0:
            out += chunk[:room]
        if len(chunk) > room:
            over.set()
            return


@dataclass(frozen=True)
class Finished:
    rc: int | None  # None: killed at the deadline
    stdout: bytes
    stderr: bytes
    truncated: bool  # stdout went past its cap; the command was stopped there


def run_bounded(
    argv: list[str],
    timeout_s: float,
    stdin: bytes | None = None,
    max_stdout: int = MAX_OUTPUT,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Finished:
    """Run argv; stdout kept up to max_stdout (the command is stopped past it). Its
    environment is `env`, or pvcheck's without the secrets it holds."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env if env is not None else child_env(),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out, err = bytearray(), bytearray()
    over, err_over = threading.Event(), threading.Event()
    readers = [
        threading.Thread(target=_read_bounded, args=(proc.stdout, max_stdout, out, over)),
        threading.Thread(target=_read_bounded, args=(proc.stderr, MAX_STDERR, err, err_over)),
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    if stdin is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(stdin)
        with contextlib.suppress(OSError):
            proc.stdin.close()
    rc: int | None
    try:
        rc = _wait_or_overflow(proc, timeout_s, over)
    finally:
        _kill_group(proc)  # whatever it started is gone with it
    for reader in readers:
        reader.join(timeout=5)
    for pipe in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[union-attr]
    return Finished(rc, bytes(out), bytes(err), over.is_set())


def _wait_or_overflow(
    proc: subprocess.Popen[bytes], timeout_s: float, over: threading.Event
) -> int | None:
    """The exit code; None at the deadline. Output past its cap stops the command."""
    step = 0.05
    waited = 0.0
    while True:
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            waited += step
            if over.is_set():
                _kill_group(proc)
                return proc.wait()
            if waited >= timeout_s:
                _kill_group(proc)
                proc.wait()
                return None


class LineStream:
    """A command's stdout as lines, as they come (each cut at MAX_LINE); after iterating,
    `rc` (None when killed at the deadline) and `stderr` say how it ended."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv, self.timeout_s = argv, timeout_s
        self.rc: int | None = None
        self.stderr = b""

    def __iter__(self) -> Iterator[str]:
        proc = subprocess.Popen(
            self.argv,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        err, err_over = bytearray(), threading.Event()
        reader = threading.Thread(
            target=_read_bounded, args=(proc.stderr, MAX_STDERR, err, err_over), daemon=True
        )
        reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _kill_group(proc)

        watchdog = threading.Timer(self.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline(MAX_LINE)
                if not line:
                    break
                yield line.decode("utf-8", errors="replace")
            rc = proc.wait()
        finally:
            watchdog.cancel()
            _kill_group(proc)
            reader.join(timeout=5)
            with contextlib.suppress(OSError):
                proc.stdout.close()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]
        self.rc = None if expired.is_set() else rc
        self.stderr = bytes(err)


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


_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


def printable(text: str, limit: int = 300) -> str:
    """Text from a host or a file others may name, as one line of printable ASCII: no line
    break to forge a log line, no terminal escape."""
    return _NOT_PRINTABLE.sub(" ", text).strip()[:limit]
