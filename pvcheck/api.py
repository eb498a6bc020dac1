"""The Prefect API a command-line run reports to.

With no API configured (PREFECT_API_URL, or a Prefect profile), Prefect would start a
temporary server of its own and stop it at exit, but a pvcheck killed with SIGKILL never
reaches exit: the server was left running for good (about 200 MB each; the fault tests
alone left fifteen). pvcheck therefore starts that temporary server itself, the same way,
from the main thread and with the kernel told to stop it when pvcheck dies
(PR_SET_PDEATHSIG), and points Prefect at it. A configured API is used as is.

Every API pvcheck starts requires an auth string (PREFECT_SERVER_API_AUTH_STRING): without
one, any local user could call it, and a served API hands out runs that pvcheck executes as
root.
"""

from __future__ import annotations

import atexit
import ctypes
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
from pathlib import Path

import httpx

from pvcheck import masking, quiet_prefect
from pvcheck.errors import PrefectUnavailable
from pvcheck.safeio import atomic_write, read_capped, require_root_only

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 60.0


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


def start_server(host: str, port: int, auth: str, ui: bool = False) -> subprocess.Popen[bytes]:
    """A Prefect server on host:port that requires `auth` (Basic "user:secret") for every
    call but /health, and that the kernel stops when this process dies. With `ui`, the full
    `prefect server start` (the UI asks for the auth string); without, only what a temporary
    API needs, as Prefect's own temporary server runs it."""
    import prefect
    from prefect.settings import get_current_settings

    quiet_prefect()
    parent = os.getpid()
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    if ui:
        prefect_cli = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
        argv = [prefect_cli, "server", "start", "--host", host, "--port", str(port)]
    else:
        argv = [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1])),
            *("--factory", "prefect.server.api.server:create_app"),
            *("--host", host, "--port", str(port), "--log-level", "error"),
            *("--lifespan", "on"),
        ]
        env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"})
        # Its own database: runs of a temporary API (a killed one stays "Running" for ever)
        # never show in the UI of the server the operator serves from the default one.
        if "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in os.environ:
            own = Path(get_current_settings().home) / "pvcheck-temporary.db"
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{own}"
        env["PREFECT__SERVER_FINAL"] = "1"
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if ui else None,
        stderr=subprocess.DEVNULL if ui else None,
        # Forked from the main thread, which lives as long as pvcheck: the death signal
        # follows the thread that forked, not the process.
        preexec_fn=lambda: _die_with_parent(parent),
    )


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


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` on 127.0.0.1 or any address."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found.add(inode)
    return found


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
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
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


def ensure_prefect_api() -> str | None:
    """Start the temporary API for this process unless one is configured (then None; a
    configured one that does not answer is PrefectUnavailable, exit 7, not a verdict).

    It requires an auth string only this process knows, is stopped at exit after Prefect's
    own exit handlers (registered later, so run earlier) have sent the last logs and events
    to it, and if pvcheck is killed, the kernel stops it.
    """
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        if not api_healthy(str(configured)):
            raise PrefectUnavailable(
                f"the Prefect API at {configured} does not answer /health; start it, or unset "
                "PREFECT_API_URL to let pvcheck run a temporary one"
            )
        return None
    if threading.current_thread() is not threading.main_thread():
        return None  # not the main thread (see start_server): Prefect's own then
    auth = new_auth_string()
    for _ in range(3):  # a port taken between choosing and binding: choose again
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        proc = start_server("127.0.0.1", port, auth)
        if wait_healthy(url, START_TIMEOUT_S, proc) and listener_is_ours(port, proc.pid):
            break
        _stop(proc)
    else:
        raise PrefectUnavailable("the temporary Prefect API did not start; set PREFECT_API_URL")
    atexit.register(_stop, proc)
    print(
        f"pvcheck: temporary Prefect API on {url} for this run "
        "(set PREFECT_API_URL to use a running server)",
        file=sys.stderr,
    )
    use_api(url, auth)
    return url
