"""The kept Prefect API's application (runs in the server process, see `pvcheck.api`).

Prefect's own server app, wrapped so that every request marks the server busy, plus a
watchdog thread: once no pvcheck process holds the users' lock (each holds it shared for its
whole life, and the kernel lets go of a killed one's) and no request came for
PVCHECK_API_KEEP_S seconds, it takes the lock exclusively (no pvcheck can pick the server up
from then on), removes the record that names it and stops the server gracefully.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Idle:
    """Seconds since the server last had a request or a user."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def touch(self) -> None:
        self._last = self._clock()

    def seconds(self) -> float:
        return self._clock() - self._last


class Touching:
    """An ASGI app that marks `idle` on every call before handing it to `app`."""

    def __init__(self, app: App, idle: Idle) -> None:
        self.app, self.idle = app, idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.idle.touch()
        await self.app(scope, receive, send)


def _names_me(record: Path) -> bool:
    from pvcheck.api import KeptApi
    from pvcheck.errors import PvcheckError
    from pvcheck.safeio import read_capped

    try:
        kept = KeptApi.parse(read_capped(record, 4096))
    except (OSError, PvcheckError):  # an unreadable record is not ours to remove
        return False
    return kept is not None and kept.pid == os.getpid()


def should_stop(idle_s: float, keep_s: float, lock_fd: int) -> bool:
    """Whether to stop now: idle long enough and the users' lock taken exclusively (kept
    taken when True; a user holding it is a reason to wait, not to stop)."""
    if idle_s < keep_s:
        return False
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def watch(lock: Path, record: Path, keep_s: float, idle: Idle) -> None:
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    tick = min(1.0, max(keep_s / 4, 0.1))
    while True:
        time.sleep(tick)
        if should_stop(idle.seconds(), keep_s, fd):
            break
        if idle.seconds() >= keep_s:
            idle.touch()  # a user holds it: idle counts again from when it lets go
    if _names_me(record):
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
    # The lock stays held (fd open) until the process is gone: whoever waits for it then
    # finds no record and starts a new server.
    os.kill(os.getpid(), signal.SIGTERM)


def create_app() -> App:
    from prefect.server.api.server import create_app as prefect_app

    idle = Idle()
    keep_s = float(os.environ["PVCHECK_API_KEEP_S"])
    lock, record = Path(os.environ["PVCHECK_API_LOCK"]), Path(os.environ["PVCHECK_API_RECORD"])
    threading.Thread(target=watch, args=(lock, record, keep_s, idle), daemon=True).start()
    return Touching(prefect_app(), idle)
