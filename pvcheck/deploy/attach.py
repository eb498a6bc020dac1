"""Sample the overlay's services while a deploy runs, to see the app really joined it."""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

from pvcheck.swarm import Swarm


class AttachmentSampler:
    """Polls `docker network inspect --verbose NET` in a thread; records the stack's services."""

    def __init__(self, swarm: Swarm, network: str, stack: str, interval_s: float = 1.0) -> None:
        self.swarm, self.network, self.prefix = swarm, network, f"{stack}_"
        self.interval_s = interval_s
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attach-sampler", daemon=True)

    def sample(self) -> None:
        inspect = self.swarm.network(self.network) or {}
        self.samples += 1
        self.seen |= {
            name for name in inspect.get("Services") or {} if name.startswith(self.prefix)
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            # A failed sample must not end the deploy; the next one may work.
            with contextlib.suppress(Exception):
                self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> AttachmentSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def describe(self) -> str:
        if not self.seen:
            return (
                f"no service of {self.prefix[:-1]} seen on {self.network} in {self.samples} samples"
            )
        return f"{', '.join(sorted(self.seen))} seen on {self.network} ({self.samples} samples)"
