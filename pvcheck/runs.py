"""Run bookkeeping on the machine pvcheck runs on: a host lock (one run per target at a time)
and a registry of started runs, so the janitor reaps only runs pvcheck itself started and
that are no longer alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import pwd
import re
import socket
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pvcheck.errors import HostBusy, StateFileError
from pvcheck.procs import printable
from pvcheck.records import format_ts, parse_ts
from pvcheck.safeio import atomic_write, open_regular, read_capped, require_root_only

MAX_RECORD_BYTES = 4096
RUN_ID = re.compile(r"^pv-[0-9]{14}-[0-9a-f]{6}$")  # flows.verify.new_run_id
# pvcheck.config.SSH_URL, which validated the URL (not imported: config is heavy); here a
# trailing slash is tolerated, as the key always did.
_SSH_URL = re.compile(
    r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{1,5}))?$"
)


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused
    pid from the process that wrote the record."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


SSH_RESOLVE_TIMEOUT_S = 10.0


@functools.lru_cache(maxsize=64)
def _ssh_destination(
    user: str | None, host: str, port: int, config: str | None = None
) -> tuple[str, str, int]:
    """(user, hostname, port) as ssh itself resolves them for the way pvcheck connects
    (`ssh [-F CONFIG] -p PORT [user@]host`, pvcheck.hosts): `ssh -G` applies ssh_config (Host
    aliases, HostName, User) without connecting. Without a working ssh: the URL's, with
    ssh's defaults (the current user's name)."""
    fallback = (user or pwd.getpwuid(os.geteuid()).pw_name, host.lower(), port)
    dest = f"{user}@{host}" if user else host
    try:
        done = subprocess.run(
            ["ssh", *(["-F", config] if config else []), "-G", "-p", str(port), "--", dest],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SSH_RESOLVE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return fallback
    said = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
    try:
        resolved = (said["user"], said["hostname"].lower(), int(said["port"]))
    except (KeyError, ValueError):
        return fallback
    return resolved if done.returncode == 0 and all(resolved) else fallback


def _canonical(docker_host: str, ssh_config: Path | None = None) -> str:
    """One spelling per engine: a unix socket by its real path, ssh by the user, host and
    port ssh resolves, tcp with its default port; anything else as given."""
    url = docker_host.strip().rstrip("/")
    scheme, _, rest = url.partition("://")
    if scheme == "unix":
        return "unix:" + os.path.realpath("/" + rest.lstrip("/"))
    if scheme == "ssh" and (found := _SSH_URL.match(url)):
        if ssh_config is not None:  # read by `ssh -G` below: as root, root's alone
            require_root_only(ssh_config, "target.ssh.config_file")
        config = str(ssh_config) if ssh_config is not None else None
        user, host, port = _ssh_destination(
            found["user"], found["host"], int(found["port"] or 22), config
        )
        return f"ssh:{user}@{host}:{port}"
    if scheme == "tcp":
        try:
            parts = urlsplit(url)
            return f"tcp:{parts.hostname or ''}:{parts.port or 2375}"
        except ValueError:
            pass
    return f"{scheme}:{rest}"


def engine_key(docker_host: str, ssh_config: Path | None = None) -> str:
    """The engine a run works on, as a file name: the lock and the registry belong to the
    engine, not to a config's name or to how its URL is spelt (`unix:///var/run/docker.sock`
    and `unix:///run/docker.sock`, `ssh://root@h` and `ssh://h:22` as root, are one engine)."""
    scheme, _, where = _canonical(docker_host, ssh_config).partition(":")
    return f"{scheme}_" + re.sub(r"[^A-Za-z0-9@._-]", "_", where.lstrip("/"))


def _alive(host: str, pid: int, proc_start: str | None) -> bool:
    if host != socket.gethostname():
        return True  # another machine's run: never ours to judge
    started = _proc_start(pid)
    return started is not None and started == proc_start


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    pid: int
    proc_start: str | None
    host: str
    started_at: str
    engine: str = ""  # the docker_host the run worked on

    def alive(self) -> bool:
        return _alive(self.host, self.pid, self.proc_start)


class RunRegistry:
    """One JSON file per started run under STATE_DIR/runs/ENGINE/."""

    def __init__(self, state_dir: Path, docker_host: str, ssh_config: Path | None = None) -> None:
        self.engine = docker_host
        self.dir = state_dir / "runs" / engine_key(docker_host, ssh_config)

    def start(self, run_id: str) -> RunRecord:
        record = RunRecord(
            run_id,
            os.getpid(),
            _proc_start(os.getpid()),
            socket.gethostname(),
            format_ts(datetime.now(UTC)),
            self.engine,
        )
        atomic_write(self.dir / f"{run_id}.json", json.dumps(record.__dict__) + "\n")
        return record

    def finish(self, run_id: str) -> None:
        (self.dir / f"{run_id}.json").unlink(missing_ok=True)

    def records(self) -> list[RunRecord]:
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                data: dict[str, Any] = json.loads(read_capped(path, MAX_RECORD_BYTES) or b"")
                record = RunRecord(**data)
            except (OSError, ValueError, TypeError, RecursionError, StateFileError):
                continue  # a torn or planted record is not a run we can prove we started
            # The janitor sweeps by `pvcheck.run=<id>`: an empty or odd id would widen that
            # filter to every pvcheck run, so only ids pvcheck makes are believed.
            if RUN_ID.match(str(record.run_id)) and path.name == f"{record.run_id}.json":
                out.append(record)
        return out

    def stale(self) -> list[RunRecord]:
        return [r for r in self.records() if not r.alive()]


@dataclass(frozen=True)
class Holder:
    """Who holds the host lock, as its lock file records it: the run's id, its Prefect flow
    run (id and UI link, when it runs under Prefect), the process, and since when."""

    run_id: str = ""
    flow_run_id: str = ""
    flow_run_url: str = ""
    pid: int = 0
    host: str = ""
    since: str = ""

    def describe(self) -> str:
        """One line for the operator: the holding run first, then where to see it."""
        run = f"run {self.run_id}" if self.run_id else "a run"
        if self.flow_run_url:
            run += f" (flow run {self.flow_run_url})"
        elif self.flow_run_id:
            run += f" (flow run {self.flow_run_id})"
        where = f"pid {self.pid} on {self.host or '?'}"
        return printable(f"{run}, {where}" + (f", since {self.since}" if self.since else ""))

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The record a lock file holds; None for an older or torn one."""
        try:
            data = json.loads(text)
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            holder = cls(**fields)
        except (ValueError, TypeError, RecursionError):
            return None
        ok = isinstance(holder.pid, int) and all(
            isinstance(getattr(holder, k), str) for k in fields if k != "pid"
        )
        return holder if ok else None


class HostLock:
    """An exclusive flock per engine on this machine; the kernel releases it when its holder
    dies. EngineLock keeps other machines out. The lock file names the holder (`Holder`), so
    a run that finds the host busy can say which run has it."""

    def __init__(
        self,
        state_dir: Path,
        docker_host: str,
        holder: Holder | None = None,
        ssh_config: Path | None = None,
    ) -> None:
        self.path = state_dir / f"{engine_key(docker_host, ssh_config)}.lock"
        self.holder = holder or Holder()
        self._fh: IO[str] | None = None

    def __enter__(self) -> HostLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            require_root_only(self.path.parent, "the state folder")
            fh = os.fdopen(open_regular(self.path, os.O_RDWR | os.O_CREAT), "r+")
        except StateFileError:
            raise
        except OSError as exc:
            raise StateFileError(str(self.path), f"cannot open the host lock: {exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read(MAX_RECORD_BYTES)
            fh.close()
            found = Holder.parse(text)
            holder = found.describe() if found else (printable(text) or "a run that left no record")
            raise HostBusy(
                f"another pvcheck run holds this host: {holder}. This run steps aside; start "
                f"it again once that one has finished (lock {self.path})"
            ) from None
        me = dataclasses.replace(
            self.holder,
            pid=os.getpid(),
            host=socket.gethostname(),
            since=format_ts(datetime.now(UTC)),
        )
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(me.__dict__) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


LOCK_NAME = "pvcheck-host-lock"
LOCK_LABEL = "pvcheck.lock"  # never pvcheck.run: a run's teardown must not remove the lock


class EngineLock:
    """A lock kept on the engine itself: a swarm config created atomically (the engine
    refuses a second one of the same name), so two machines, or two state folders, never run
    against one host at once. A holder that died on this machine, or a lock older than
    `expiry_s`, is taken over."""

    def __init__(
        self, swarm: Any, run_id: str, expiry_s: float = 12 * 3600, flow_run_url: str = ""
    ) -> None:
        self.swarm, self.run_id, self.expiry_s = swarm, run_id, expiry_s
        self.flow_run_url = flow_run_url
        self.held_id: str | None = None

    def _labels(self) -> dict[str, str]:
        return {
            LOCK_LABEL: "1",
            f"{LOCK_LABEL}.run": self.run_id,
            f"{LOCK_LABEL}.host": socket.gethostname(),
            f"{LOCK_LABEL}.pid": str(os.getpid()),
            f"{LOCK_LABEL}.proc_start": _proc_start(os.getpid()) or "",
            f"{LOCK_LABEL}.at": format_ts(datetime.now(UTC)),
            f"{LOCK_LABEL}.flow_run_url": self.flow_run_url,
        }

    def _stale(self, labels: dict[str, str]) -> bool:
        at = parse_ts(labels.get(f"{LOCK_LABEL}.at", ""))
        if at is None or (datetime.now(UTC) - at).total_seconds() > self.expiry_s:
            return True
        try:
            pid = int(labels.get(f"{LOCK_LABEL}.pid", ""))
        except ValueError:
            return True
        host = labels.get(f"{LOCK_LABEL}.host", "")
        return not _alive(host, pid, labels.get(f"{LOCK_LABEL}.proc_start") or None)

    def __enter__(self) -> EngineLock:
        import docker.errors

        api = self.swarm.api
        for _ in range(2):
            try:
                made = self.swarm.call(
                    api.create_config, LOCK_NAME, self.run_id.encode(), labels=self._labels()
                )
                self.held_id = str(made["ID"])
                return self
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
            current = next(iter(self.swarm.call(api.configs, filters={"name": LOCK_NAME})), None)
            if current is None:
                continue  # released meanwhile
            labels = (current.get("Spec") or {}).get("Labels") or {}
            if labels.get(f"{LOCK_LABEL}.run") == self.run_id:  # a retried create that landed
                self.held_id = str(current["ID"])
                return self
            if not self._stale(labels):
                holder = Holder(
                    run_id=printable(labels.get(f"{LOCK_LABEL}.run", ""), 80),
                    flow_run_url=printable(labels.get(f"{LOCK_LABEL}.flow_run_url", "")),
                    pid=int(labels.get(f"{LOCK_LABEL}.pid", "0") or 0),
                    host=printable(labels.get(f"{LOCK_LABEL}.host", ""), 80),
                    since=printable(labels.get(f"{LOCK_LABEL}.at", ""), 40),
                )
                raise HostBusy(
                    f"another pvcheck run holds this host: {holder.describe()}. This run steps "
                    f"aside; start it again once that one has finished (engine lock: docker "
                    f"config {LOCK_NAME})"
                )
            with contextlib.suppress(docker.errors.NotFound):
                self.swarm.call(api.remove_config, current["ID"])
        raise HostBusy(f"the engine lock (docker config {LOCK_NAME}) could not be taken")

    def __exit__(self, *exc_info: object) -> None:
        if self.held_id is not None:
            with contextlib.suppress(Exception):  # an engine gone now: the lock expires
                self.swarm.call(self.swarm.api.remove_config, self.held_id)
            self.held_id = None
