"""The Prefect API a command-line run reports to.

With no API configured (PREFECT_API_URL, or a Prefect profile), Prefect would start a
temporary server of its own and stop it at exit, but a pvcheck killed with SIGKILL never
reaches exit: the server was left running for good (about 200 MB each; the fault tests
alone left fifteen). pvcheck therefore starts that temporary server itself, the same way,
from the main thread and with the kernel told to stop it when pvcheck dies
(PR_SET_PDEATHSIG), and points Prefect at it. A configured API is used as is.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pvcheck import quiet_prefect

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


def _start(port: int) -> subprocess.Popen[bytes]:
    import prefect
    from prefect.settings import get_current_settings

    quiet_prefect()
    parent = os.getpid()
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1])),
            *("--factory", "prefect.server.api.server:create_app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "error"),
            *("--lifespan", "on"),
        ],
        env={
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            # What Prefect's own temporary server sets: no UI, only the services an
            # ephemeral server needs.
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        },
        stdin=subprocess.DEVNULL,
        # Forked from the main thread, which lives as long as pvcheck: the death signal
        # follows the thread that forked, not the process.
        preexec_fn=lambda: _die_with_parent(parent),
    )


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
    """Start the temporary API for this process unless one is configured (then None).

    It is stopped at exit, after Prefect's own exit handlers (registered later, so run
    earlier) have sent the last logs and events to it; if pvcheck is killed, the kernel
    stops it.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    if get_current_settings().api.url or threading.current_thread() is not threading.main_thread():
        return None  # configured; or not the main thread (see _start), so Prefect's own
    for _ in range(3):  # a port taken between choosing and binding: choose again
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        proc = _start(port)
        if wait_healthy(url, START_TIMEOUT_S, proc):
            break
        _stop(proc)
    else:
        raise RuntimeError("the temporary Prefect API did not start; set PREFECT_API_URL")
    atexit.register(_stop, proc)
    print(
        f"pvcheck: temporary Prefect API on {url} for this run "
        "(set PREFECT_API_URL to use a running server)",
        file=sys.stderr,
    )
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()  # Prefect read its settings when it was imported
    return url
