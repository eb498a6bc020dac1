"""The Prefect API a command-line run reports to.

A configured API (PREFECT_API_URL, or a Prefect profile) is used as is. Without one, Prefect
would start a temporary server of its own per process and stop it at exit; a pvcheck killed
with SIGKILL never reaches exit, and the server lived on for good (about 200 MB each; the
fault tests alone left fifteen). Starting that server is also two thirds of a CLI run's CPU
(importing Prefect's server app, bench/RESULTS.md). So pvcheck starts it itself:

- kept (the default): one server per Prefect home, shared by the runs and reviews that come
  while it lives. Each user holds a shared flock on `pvcheck-api.lock` for its whole life;
  the server stops itself once nobody holds it and no request came for PVCHECK_API_KEEP_S
  seconds (`pvcheck.apiserver`), so a killed run leaves it for that long at most. Its
  address, pid and auth string are in `pvcheck-api.json` (root-only, mode 0600).
- per run (PVCHECK_API_KEEP_S=0): started from the main thread with the kernel told to stop
  it when pvcheck dies (PR_SET_PDEATHSIG).

Every API pvcheck starts requires an auth string (PREFECT_SERVER_API_AUTH_STRING): without
one, any local user could call it, and a served API hands out runs that pvcheck executes as
root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pvcheck import masking, quiet_prefect
from pvcheck.errors import EnvironmentSettingError, PrefectUnavailable, PvcheckError
from pvcheck.procs import printable
from pvcheck.safeio import atomic_write, open_regular, read_capped, require_root_only

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 60.0

KEEP_ENV = "PVCHECK_API_KEEP_S"
DEFAULT_KEEP_S = 900.0
MAX_KEEP_S = 86400.0
LOCK_NAME = "pvcheck-api.lock"  # users hold it shared; the idle server takes it to stop
START_LOCK_NAME = "pvcheck-api.start.lock"  # one pvcheck at a time chooses or starts
RECORD_NAME = "pvcheck-api.json"
LOG_NAME = "pvcheck-api.log"
# Another pvcheck starting the kept server: wait for it (three tries of a start), not race it.
LOCK_WAIT_S = 3 * (START_TIMEOUT_S + 10) + 30
GRACEFUL_S = 10  # a stopping server's open requests get this long
# What the kept server inherits from the run that starts it: Prefect's settings and what a
# Python process needs, never the rest (a token in the operator's environment would outlive
# the run by the server's whole life).
_SERVER_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH")


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the parent dies; and if it already has, go."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Keep:
    """How a kept server stops itself: after `seconds` with no user holding `lock` and no
    request; `record` is the file that names it (removed as it goes)."""

    seconds: float
    lock: Path
    record: Path
    log: Path
    start_lock: Path


def _server_env(auth: str, keep: Keep | None) -> dict[str, str]:
    from prefect.settings import get_current_settings

    quiet_prefect()
    base = (
        {k: v for k, v in os.environ.items() if k in _SERVER_ENV or k.startswith("PREFECT_")}
        if keep
        else dict(os.environ)
    )
    env = {
        **base,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    return env


def start_server(host: str, port: int, auth: str) -> subprocess.Popen[bytes]:
    """The full `prefect server start` on host:port (UI included: it asks for the auth
    string), requiring `auth` (Basic "user:secret") for every call but /health; the kernel
    stops it when this process dies."""
    parent = os.getpid()
    prefect_cli = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
    return subprocess.Popen(
        [prefect_cli, "server", "start", "--host", host, "--port", str(port)],
        env=_server_env(auth, None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Forked from the main thread, which lives as long as pvcheck: the death signal
        # follows the thread that forked, not the process.
        preexec_fn=lambda: _die_with_parent(parent),
    )


def start_api(auth: str, keep: Keep | None) -> tuple[subprocess.Popen[bytes], int]:
    """Only what an API for runs needs, as Prefect's own temporary server runs it, on a
    127.0.0.1 socket this process binds and hands over (no one can take the port between
    choosing and binding it): the server and its port. Without `keep` the kernel stops it
    when this process dies; with it, it is a session of its own that stops itself when
    idle."""
    import prefect
    from prefect.settings import get_current_settings

    env = _server_env(auth, keep)
    app_dir, factory = Path(prefect.__file__).parents[1], "prefect.server.api.server"
    if keep:
        app_dir, factory = Path(__file__).parents[1], "pvcheck.apiserver"
        env.update(
            {
                KEEP_ENV: f"{keep.seconds:g}",
                "PVCHECK_API_LOCK": str(keep.lock),
                "PVCHECK_API_RECORD": str(keep.record),
            }
        )
    env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"})
    # Its own database: runs of this API (a killed one stays "Running" for ever) never show
    # in the UI of the server the operator serves from the default one.
    if "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in os.environ:
        own = Path(get_current_settings().home) / "pvcheck-temporary.db"
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{own}"
    env["PREFECT__SERVER_FINAL"] = "1"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = int(sock.getsockname()[1])
        argv = [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir)),
            *("--factory", f"{factory}:create_app", "--fd", str(sock.fileno())),
            *("--log-level", "error", "--lifespan", "on"),
            # A client that never reads its answers must not hold the stop for ever.
            *("--timeout-graceful-shutdown", str(GRACEFUL_S)),
        ]
        if keep:
            log_fd = open_regular(keep.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    pass_fds=(sock.fileno(),),
                    start_new_session=True,  # an operator's Ctrl-C stops the run, not it
                )
            finally:
                os.close(log_fd)
        else:
            parent = os.getpid()
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),),
                preexec_fn=lambda: _die_with_parent(parent),  # see start_server
            )
    return proc, port


def new_auth_string() -> str:
    value = f"pvcheck:{secrets.token_urlsafe(24)}"
    masking.register(value)
    return value


def auth_string(path: Path) -> str:
    """The served API's auth string, kept root-only in `path` so the UI login survives a
    restart of `pvcheck serve`; made on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    require_root_only(path.parent, "the state folder")
    data = read_capped(path, 4096)
    if data is not None and data.strip():
        value = data.decode("utf-8", errors="replace").strip()
        masking.register(value)
        return value
    value = new_auth_string()
    atomic_write(path, value + "\n", new_mode=0o600)
    return value


def use_api(url: str, auth: str | None) -> None:
    """Point this process (and the flow runs it starts) at the API, with its credentials."""
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = url
    if auth is not None:
        os.environ["PREFECT_API_AUTH_STRING"] = auth
    refresh_global_settings_context()  # Prefect read its settings when it was imported


def _listening(port: int, pid: int | None = None) -> dict[str, int]:
    """Socket inode -> owner uid of what listens on TCP `port` (127.0.0.1 or any address), in
    the network namespace of process `pid` (this process's when None)."""
    found = {}
    base = f"/proc/{pid}/net" if pid is not None else "/proc/net"
    for table in (f"{base}/tcp", f"{base}/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, uid, inode = fields[1], fields[3], fields[7], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found[inode] = int(uid)
    return found


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat field 22): with
    the boot id, one process for ever, where a pid is soon another's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_tree(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    tree, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.add(child)
            todo.append(child)
    return tree


def listener_is_ours(port: int, pid: int) -> bool:
    """Whether what listens on `port` is the server pvcheck started (process `pid` or one of
    its children): a squatter that answers /health first never gets the auth string."""
    inodes = {f"socket:[{i}]" for i in _listening(port, pid)}
    if not inodes:
        return False
    for member in _process_tree(pid):
        try:
            fds = list(Path(f"/proc/{member}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return True
            except OSError:
                continue
    return False


def accepts_anonymous(url: str) -> bool:
    """The API answers a call that carries no credentials (anyone on the machine may call)."""
    try:
        resp = httpx.post(f"{url}/flows/filter", json={"limit": 1}, timeout=5, trust_env=False)
    except httpx.HTTPError:
        return False
    return resp.status_code < 400


def api_healthy(url: str) -> bool:
    """The Prefect API at url answers /health (never through a proxy)."""
    try:
        return httpx.get(f"{url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until the API at url is healthy (True), or the deadline, or `proc` (the server
    being waited for) exits (False)."""
    deadline = time.monotonic() + timeout_s
    while not api_healthy(url):
        if time.monotonic() >= deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.1)
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def keep_seconds() -> float:
    """PVCHECK_API_KEEP_S: how long a kept server outlives its last user (0: per run)."""
    raw = os.environ.get(KEEP_ENV, "").strip()
    if not raw:
        return DEFAULT_KEEP_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_KEEP_S:  # NaN fails both comparisons
        raise EnvironmentSettingError(
            f"{KEEP_ENV}={printable(raw, 40)!r}: want seconds from 0 (a server per run) "
            f"to {MAX_KEEP_S:g}"
        )
    return value


@dataclass(frozen=True)
class KeptApi:
    """The kept server as its record names it."""

    url: str
    port: int
    pid: int
    auth: str
    start: int  # the process's start time (process_start) in this boot
    boot: str

    def to_json(self) -> str:
        doc = {"url": self.url, "pid": self.pid, "auth": self.auth}
        return json.dumps(doc | {"start": self.start, "boot": self.boot}) + "\n"

    @classmethod
    def parse(cls, data: bytes | None) -> KeptApi | None:
        """Pure: the record, or None for anything but the shape pvcheck writes (a loopback
        URL with a port, a pid with its start time and boot, an auth string of pvcheck's
        form)."""
        try:
            doc = json.loads(data or b"")
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        url, pid, auth = doc.get("url"), doc.get("pid"), doc.get("auth")
        start, boot = doc.get("start"), doc.get("boot")
        if not (isinstance(url, str) and isinstance(auth, str) and isinstance(boot, str)):
            return None
        if not (type(pid) is int and pid > 1 and type(start) is int and start >= 0):
            return None
        prefix, _, rest = url.partition("http://127.0.0.1:")
        port_text, _, path = rest.partition("/")
        if prefix or path != "api" or not port_text.isdigit() or not auth.startswith("pvcheck:"):
            return None
        port = int(port_text)
        return cls(url, port, pid, auth, start, boot) if 0 < port < 65536 else None

    def is_live_server(self) -> bool:
        """The very process the record names (same boot, same start time: not a pid used
        again), listening on its port with a socket of the right owner (root's, as root), and
        answering /health. Only then does it get the auth string."""
        if self.boot != boot_id() or process_start(self.pid) != self.start:
            return False
        if not listener_is_ours(self.port, self.pid):
            return False
        owners = set(_listening(self.port).values())
        if os.geteuid() == 0 and owners != {0}:
            return False
        return api_healthy(self.url)


def kept_paths(home: Path) -> Keep:
    names = (LOCK_NAME, RECORD_NAME, LOG_NAME, START_LOCK_NAME)
    return Keep(keep_seconds(), *(home / name for name in names))


# The lock this process holds shared for its whole life while it uses the kept server.
_held: list[int] = []


def _lock(fd: int, kind: int, path: Path, wait_s: float) -> None:
    """flock `fd` (LOCK_EX or LOCK_SH) within `wait_s`, else PrefectUnavailable naming it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise PrefectUnavailable(
                    f"{path} stayed locked for {wait_s:g}s (another pvcheck starting or "
                    "stopping the kept Prefect API); set PREFECT_API_URL to use a running server"
                ) from None
            time.sleep(0.1)


def _lock_exclusive(path: Path, wait_s: float) -> int:
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)
    try:
        _lock(fd, fcntl.LOCK_EX, path, wait_s)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _start(auth: str, keep: Keep | None) -> tuple[str, int, subprocess.Popen[bytes]]:
    proc, port = start_api(auth, keep)
    url = f"http://127.0.0.1:{port}/api"
    if wait_healthy(url, START_TIMEOUT_S, proc) and listener_is_ours(port, proc.pid):
        return url, port, proc
    _stop(proc)
    where = f"; its output is in {keep.log}" if keep else ""
    raise PrefectUnavailable(f"the Prefect API did not start{where}; set PREFECT_API_URL")


def _prefect_home() -> Path:
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        require_root_only(home, "the Prefect home (PREFECT_HOME)")
    return home


def ensure_prefect_api() -> str | None:
    """Point this process at a Prefect API unless one is configured (then None; a configured
    one that does not answer is PrefectUnavailable, exit 7, not a verdict): the kept server
    of this Prefect home, started if none lives, or with PVCHECK_API_KEEP_S=0 one for this
    process alone, stopped at exit after Prefect's own exit handlers (registered later, so
    run earlier) have sent the last logs and events to it, and by the kernel if pvcheck is
    killed. Every server pvcheck starts requires an auth string only pvcheck knows."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        if not api_healthy(str(configured)):
            raise PrefectUnavailable(
                f"the Prefect API at {configured} does not answer /health; start it, or unset "
                "PREFECT_API_URL to let pvcheck run one"
            )
        return None
    if threading.current_thread() is not threading.main_thread():
        return None  # not the main thread (see start_server): Prefect's own then
    keep = kept_paths(_prefect_home())
    if keep.seconds == 0:
        auth = new_auth_string()
        url, _, proc = _start(auth, None)
        atexit.register(_stop, proc)
        note = "for this run"
    else:
        url, auth, note = _attach_kept(keep)
    print(
        f"pvcheck: Prefect API on {url} {note} (set PREFECT_API_URL to use a running server)",
        file=sys.stderr,
    )
    use_api(url, auth)
    return url


def _attach_kept(keep: Keep) -> tuple[str, str, str]:
    """The kept server's URL and auth string (started if none answers), with this process
    counted as its user until it exits."""
    start_fd = _lock_exclusive(keep.start_lock, LOCK_WAIT_S)
    users_fd = -1
    try:
        users_fd = open_regular(keep.lock, os.O_RDWR | os.O_CREAT)
        # Shared first: no server can stop while this process decides and uses it (one that
        # is stopping holds it exclusively until it is gone; its record is gone by then).
        _lock(users_fd, fcntl.LOCK_SH, keep.lock, LOCK_WAIT_S)
        kept = KeptApi.parse(read_capped(keep.record, 4096, root_only=True))
        if kept is not None and kept.is_live_server():
            note = f"kept by pid {kept.pid}, reused"
        else:
            auth = new_auth_string()
            url, port, proc = _start(auth, keep)
            start = process_start(proc.pid)
            if start is None:
                raise PrefectUnavailable(f"the Prefect API (pid {proc.pid}) ended at once")
            kept = KeptApi(url, port, proc.pid, auth, start, boot_id())
            atomic_write(keep.record, kept.to_json(), new_mode=0o600)
            note = f"kept {keep.seconds:g}s after its last run (pid {proc.pid})"
        masking.register(kept.auth)
    except BaseException:
        if users_fd >= 0:
            os.close(users_fd)
        raise
    finally:
        os.close(start_fd)
    _held.append(users_fd)  # held until this process exits
    return kept.url, kept.auth, note


def stop_kept(home: Path, timeout_s: float = 30.0) -> int | None:
    """Stop the kept server of `home` now, once no run uses it: the pid stopped, or None
    when none lived (or it did not stop within `timeout_s`: its record then stays)."""
    if _held:
        raise PvcheckError("this process uses the kept Prefect API; it cannot stop it")
    keep = kept_paths(home)
    if not keep.lock.exists():
        return None
    start_fd = _lock_exclusive(keep.start_lock, timeout_s)
    try:
        kept = KeptApi.parse(read_capped(keep.record, 4096, root_only=True))
        if kept is None or not kept.is_live_server():
            return None
        os.close(_lock_exclusive(keep.lock, timeout_s))  # no run uses it now
        os.kill(kept.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_start(kept.pid) == kept.start and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(kept.pid, os.WNOHANG)  # ours to reap when this process started it
            time.sleep(0.1)
        if process_start(kept.pid) == kept.start:
            return None
        with contextlib.suppress(FileNotFoundError):
            keep.record.unlink()
        return kept.pid
    finally:
        os.close(start_fd)
