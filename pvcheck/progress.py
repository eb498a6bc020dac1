"""Progress of pvcheck's long waits (other runs to finish, a Drone build, the allocator to
settle), reported to whoever listens: a Prefect progress artifact inside a task, nothing
elsewhere. The waits stay free of Prefect; tasks choose the listener."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Listener = Callable[[str, float], None]  # (what is awaited, fraction done 0..1)
_listener: ContextVar[Listener | None] = ContextVar("pvcheck_progress", default=None)


def report(what: str, started: float, deadline: float) -> None:
    """A wait between `started` and `deadline` (time.monotonic) is this far along."""
    listener = _listener.get()
    if listener is None:
        return
    span = max(deadline - started, 1e-9)
    listener(what, min(1.0, max(0.0, (time.monotonic() - started) / span)))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
