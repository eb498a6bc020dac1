"""Run bookkeeping on the machine pvcheck runs on: a host lock (one run per target at a time)
and a registry of started runs, so the janitor reaps only runs pvcheck itself started and
that are no longer alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pvcheck.errors import HostBusy, StateFileError
from pvcheck.records import format_ts
from pvcheck.statefiles import atomic_write


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused
    pid from the process that wrote the record."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    pid: int
    proc_start: str | None
    host: str
    started_at: str

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another machine's run: never ours to judge
        started = _proc_start(self.pid)
        return started is not None and started == self.proc_start


class RunRegistry:
    """One JSON file per started run under STATE_DIR/runs/TARGET/."""

    def __init__(self, state_dir: Path, target: str) -> None:
        self.dir = state_dir / "runs" / target

    def start(self, run_id: str) -> RunRecord:
        record = RunRecord(
            run_id,
            os.getpid(),
            _proc_start(os.getpid()),
            socket.gethostname(),
            format_ts(datetime.now(UTC)),
        )
        atomic_write(self.dir / f"{run_id}.json", json.dumps(record.__dict__) + "\n")
        return record

    def finish(self, run_id: str) -> None:
        (self.dir / f"{run_id}.json").unlink(missing_ok=True)

    def records(self) -> list[RunRecord]:
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                out.append(RunRecord(**data))
            except (OSError, ValueError, TypeError):
                continue  # a torn record is not a run we can prove we started
        return out

    def stale(self) -> list[RunRecord]:
        return [r for r in self.records() if not r.alive()]


class HostLock:
    """An exclusive flock per target; the kernel releases it when its holder dies."""

    def __init__(self, state_dir: Path, target: str) -> None:
        self.path = state_dir / f"{target}.lock"
        self._fh: IO[str] | None = None

    def __enter__(self) -> HostLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")
        except OSError as exc:
            raise StateFileError(str(self.path), f"cannot open the host lock: {exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise HostBusy(
                f"another pvcheck run holds {self.path} ({holder}); try again later"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
