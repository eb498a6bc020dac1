"""Sample the overlay's services while a deploy runs, to see the app really joined it, and
to find the stack a harness deployed under a name it generated."""

from __future__ import annotations

import contextlib
import re
import threading
from types import TracebackType

from pvcheck.seams import SwarmApi


def stack_of(service: str, stack: str | None, pattern: str | None) -> str | None:
    """Pure: the stack a service name belongs to: the fixed `stack`, or the longest
    `STACK_` prefix matching `pattern` (stack names may hold '_': `ab12-3f4e5d_ci_x_net`)."""
    if stack is not None:
        return stack if service.startswith(f"{stack}_") else None
    if pattern is None:
        return None
    regex = re.compile(pattern)
    parts = service.split("_")
    for n in range(len(parts) - 1, 0, -1):
        candidate = "_".join(parts[:n])
        if regex.search(candidate):
            return candidate
    return None


class AttachmentSampler:
    """Polls `docker network inspect --verbose NET` in a thread; records the services of the
    watched stack (fixed name, or any new stack matching the harness pattern)."""

    def __init__(
        self,
        swarm: SwarmApi,
        network: str,
        stack: str | None,
        pattern: str | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.swarm, self.network, self.stack, self.pattern = swarm, network, stack, pattern
        self.interval_s = interval_s
        self.seen: set[str] = set()
        self.stacks: set[str] = set()
        self.samples = 0
        self._present: set[str] | None = None  # services already there when sampling began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attach-sampler", daemon=True)

    def sample(self) -> None:
        inspect = self.swarm.network(self.network) or {}
        names = set(inspect.get("Services") or {})
        self.samples += 1
        if self._present is None:
            # A harness stack that was there before the run is not the one it deploys.
            self._present = names if self.stack is None else set()
        for name in names - self._present:
            stack = stack_of(name, self.stack, self.pattern)
            if stack is not None:
                self.seen.add(name)
                self.stacks.add(stack)

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

    def services_of(self, stack: str) -> list[str]:
        """The services seen of exactly that stack (not of one whose name it begins)."""
        return sorted(s for s in self.seen if stack_of(s, None, self.pattern) == stack)

    def describe(self, own: str | None = None) -> str:
        """What was seen of the watched stack; `own`: only that one of the stacks seen (the
        run's own, known once the harness run was found), the others named apart."""
        watched = own or self.stack or f"a stack matching {self.pattern}"
        seen = self.services_of(own) if own else sorted(self.seen)
        if not seen:
            return f"no service of {watched} seen on {self.network} in {self.samples} samples"
        said = f"{', '.join(seen)} seen on {self.network} ({self.samples} samples)"
        others = sorted(self.stacks - {own}) if own else []
        if others:
            said += f"; not this run's: {', '.join(others)}"
        return said


def watched_stacks(named: str | None, sampler: AttachmentSampler) -> list[str]:
    """The stacks to check the teardown of: the one named (by the config or the harness's
    results), else every harness-named stack seen. A stack never seen on the network during
    the run is not watched: a teardown check of it would pass having watched nothing."""
    if named:
        return [named] if named in sampler.stacks else []
    return sorted(sampler.stacks)


def fixed_stack(stack: str | None, pattern: str | None, recipe: str) -> str | None:
    """The stack name a harness is configured to use; the recipe's name when neither a name
    nor a pattern is configured (harnesses that name the stack after the recipe)."""
    return stack or (None if pattern else recipe)
