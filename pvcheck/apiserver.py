"""The kept Prefect API's application (runs in the server process, see `pvcheck.api`).

Prefect's own server app, wrapped so that every request carrying the auth string marks the
server busy (anyone may call /health; that must not keep a root process alive), plus a
watchdog thread: once no pvcheck process holds the users' lock (each holds it shared for its
whole life, and the kernel lets go of a killed one's) and no such request came for
PVCHECK_API_KEEP_S seconds, it takes the lock exclusively (no pvcheck can pick the server up
from then on), removes the record that names it and stops the server: gracefully, and for
good STOP_S later whatever the open requests do. A watchdog that fails stops the server too.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
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


STOP_S = 30.0  # after the graceful stop began, the process ends regardless


class Touching:
    """An ASGI app that marks `idle` on every call carrying `auth` (Basic), then hands the
    call to `app`."""

    def __init__(self, app: App, idle: Idle, auth: str) -> None:
        self.app, self.idle = app, idle
        self.header = b"Basic " + base64.b64encode(auth.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if isinstance(given, bytes) and hmac.compare_digest(given, self.header):
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


def _open_lock(lock: Path) -> int:
    return os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)


def watch(lock: Path, record: Path, keep_s: float, idle: Idle) -> None:
    fd = _open_lock(lock)
    tick = min(1.0, max(keep_s / 4, 0.1))
    while True:
        time.sleep(tick)
        if os.fstat(fd).st_ino != os.stat(lock, follow_symlinks=False).st_ino:
            os.close(fd)  # the file was made anew: its users lock the new one
            fd = _open_lock(lock)
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
    time.sleep(STOP_S)
    os._exit(0)


def _watch_or_die(lock: Path, record: Path, keep_s: float, idle: Idle) -> None:
    """A watchdog that fails would leave the server running for ever: it ends it instead."""
    try:
        watch(lock, record, keep_s, idle)
    except BaseException:
        os._exit(70)


def create_app() -> App:
    from prefect.server.api.server import create_app as prefect_app

    idle = Idle()
    keep_s = float(os.environ["PVCHECK_API_KEEP_S"])
    lock, record = Path(os.environ["PVCHECK_API_LOCK"]), Path(os.environ["PVCHECK_API_RECORD"])
    auth = os.environ["PREFECT_SERVER_API_AUTH_STRING"]
    threading.Thread(target=_watch_or_die, args=(lock, record, keep_s, idle), daemon=True).start()
    return Touching(prefect_app(), idle, auth)
