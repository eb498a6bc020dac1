"""The kept Prefect API: one server per Prefect home, shared by the runs that come while it
lives, stopping itself once nobody has used it for PVCHECK_API_KEEP_S seconds."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvcheck.api import KeptApi, keep_seconds, stop_kept
from pvcheck.apiserver import Idle, Touching, should_stop
from pvcheck.errors import EnvironmentSettingError
from tests.helpers import ROOT

GOOD = {
    "url": "http://127.0.0.1:4321/api",
    "pid": 4242,
    "auth": "pvcheck:abc",
    "start": 123456,
    "boot": "0b6f",
}


def _record(**change: object) -> bytes:
    return json.dumps(GOOD | change).encode()


def test_a_record_round_trips() -> None:
    kept = KeptApi.parse(_record())
    assert kept == KeptApi("http://127.0.0.1:4321/api", 4321, 4242, "pvcheck:abc", 123456, "0b6f")
    assert KeptApi.parse(kept.to_json().encode()) == kept


@pytest.mark.faults
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        _record(url="http://10.0.0.1:4321/api"),  # not loopback: never sent the auth string
        _record(url="http://127.0.0.1:4321/api/../x"),
        _record(url="http://127.0.0.1.evil:4321/api"),
        _record(url="http://127.0.0.1:0/api"),
        _record(url="http://127.0.0.1:70000/api"),
        _record(pid=True),
        _record(pid=1),
        _record(pid="4242"),
        _record(auth="someone:else"),
        _record(auth=None),
        _record(start=None),  # an older record: no start time, no trust
        _record(start=-1),
        _record(boot=7),
    ],
)
def test_a_record_of_any_other_shape_names_no_server(data: bytes) -> None:
    assert KeptApi.parse(data) is None


@pytest.mark.faults
@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "86401", "1e9"])
def test_a_keep_time_it_cannot_use_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PVCHECK_API_KEEP_S", value)
    with pytest.raises(EnvironmentSettingError, match="PVCHECK_API_KEEP_S=") as info:
        keep_seconds()
    assert info.value.exit_code == 2


def test_keep_time_default_and_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVCHECK_API_KEEP_S", raising=False)
    assert keep_seconds() == 900
    monkeypatch.setenv("PVCHECK_API_KEEP_S", "0")
    assert keep_seconds() == 0


def test_idle_counts_from_the_last_touch() -> None:
    now = [100.0]
    idle = Idle(lambda: now[0])
    now[0] = 130.0
    assert idle.seconds() == 30
    idle.touch()
    now[0] = 131.0
    assert idle.seconds() == 1


def test_only_calls_with_the_auth_string_keep_the_server_alive() -> None:
    import asyncio
    import base64

    now = [0.0]
    idle = Idle(lambda: now[0])
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["path"]))

    touching = Touching(app, idle, "pvcheck:s3cret")  # type: ignore[arg-type]
    good = b"Basic " + base64.b64encode(b"pvcheck:s3cret")
    for headers, path in (([], "/api/health"), ([(b"authorization", b"Basic eA==")], "/api/x")):
        now[0] += 100
        asyncio.run(touching({"path": path, "headers": headers}, None, None))  # type: ignore[arg-type]
        assert idle.seconds() >= 100  # anyone's call: still idle
    now[0] += 100
    asyncio.run(touching({"path": "/api/y", "headers": [(b"authorization", good)]}, None, None))  # type: ignore[arg-type]
    assert idle.seconds() == 0
    assert seen == ["/api/health", "/api/x", "/api/y"]  # every call still answered


def test_the_server_stops_only_when_idle_and_no_user_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "pvcheck-api.lock"
    lock.touch()
    user = os.open(lock, os.O_RDWR)
    server = os.open(lock, os.O_RDWR)  # another open file: flock tells them apart
    try:
        fcntl.flock(user, fcntl.LOCK_SH)
        assert not should_stop(5.0, 10.0, server)  # not idle long enough
        assert not should_stop(50.0, 10.0, server)  # idle, but a run holds it
        fcntl.flock(user, fcntl.LOCK_UN)
        assert should_stop(50.0, 10.0, server)
        with pytest.raises(BlockingIOError):  # taken: no run can attach any more
            fcntl.flock(user, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(user)
        os.close(server)


USER = (
    "import sys, time\n"
    "from pvcheck.api import ensure_prefect_api\n"
    "print(ensure_prefect_api(), flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _user(home: Path, hold_s: float, keep_s: str = "2") -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        "PREFECT_HOME": str(home),
        "PVCHECK_API_KEEP_S": keep_s,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-c", USER, str(hold_s)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _url(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None and proc.stderr is not None
    url = proc.stdout.readline().strip()
    return url, proc.stderr.readline()


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_runs_share_one_kept_server_which_stops_once_nobody_used_it(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    first = _user(home, 60)
    url, note = _url(first)
    assert url.startswith("http://127.0.0.1:") and "kept 2s after its last run" in note
    record = home / "pvcheck-api.json"
    assert record.stat().st_mode & 0o777 == 0o600
    kept = KeptApi.parse(record.read_bytes())
    assert kept is not None and kept.url == url
    time.sleep(4)  # past the keep time, but the first run still uses it
    second = _user(home, 0)
    url2, note2 = _url(second)
    assert url2 == url and f"kept by pid {kept.pid}, reused" in note2
    assert second.wait(timeout=30) == 0
    assert Path(f"/proc/{kept.pid}").exists()
    first.kill()  # SIGKILL: no exit handler runs; the kernel lets go of its lock
    first.wait()
    assert _gone(kept.pid, 20), "the kept server outlived its keep time"
    assert not record.exists()
    third = _user(home, 0)  # a new one starts where the old one was
    _, note3 = _url(third)
    assert third.wait(timeout=30) == 0 and "kept 2s after its last run" in note3
    assert stop_kept(home) is not None and not record.exists()


@pytest.mark.slow
def test_with_keep_zero_the_server_is_the_runs_own(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    user = _user(home, 0, keep_s="0")
    url, note = _url(user)
    assert url and "for this run" in note
    assert user.wait(timeout=30) == 0
    assert not (home / "pvcheck-api.json").exists()


SQUATTER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        open(sys.argv[1], 'a').write(str(self.headers.get('Authorization')) + '\\n')\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'true')\n"
    "    do_POST = do_GET\n"
    "    def log_message(self, *a): pass\n"
    "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
    "print(s.server_address[1], flush=True)\n"
    "s.serve_forever()\n"
)


@pytest.mark.slow
@pytest.mark.faults
def test_a_record_naming_another_users_listener_never_gets_the_auth_string(
    tmp_path: Path,
) -> None:
    """A stale record whose pid and port a local user took over (the server died, the pid
    came round again, the port was bound): that process is not the server pvcheck started,
    and never hears the auth string; a new server starts instead."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the squatter runs as nobody)")
    import tempfile

    from pvcheck.api import boot_id, process_start

    # Where nobody can write what it heard (pytest's own folders are root's alone).
    shared = Path(tempfile.mkdtemp(prefix="pvcheck-squat-"))
    os.chmod(shared, 0o755)
    seen = shared / "heard"
    seen.touch()
    os.chmod(seen, 0o666)
    squatter = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", SQUATTER, str(seen)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None
        port = int(squatter.stdout.readline())
        pid = int(subprocess.check_output(["pgrep", "-P", str(squatter.pid)]).split()[0])
        home = tmp_path / "prefect"
        home.mkdir(mode=0o700)
        start = process_start(pid)
        assert start is not None
        stale = KeptApi(f"http://127.0.0.1:{port}/api", port, pid, "pvcheck:old", start, boot_id())
        (home / "pvcheck-api.json").write_text(stale.to_json())
        os.chmod(home / "pvcheck-api.json", 0o600)
        user = _user(home, 0)
        url, note = _url(user)
        assert user.wait(timeout=60) == 0
        assert url != stale.url and "kept 2s after its last run" in note
        assert "pvcheck:" not in seen.read_text() and "Basic" not in seen.read_text()
    finally:
        squatter.kill()
        subprocess.run(["pkill", "-u", "nobody", "-f", "http.server"], check=False)
        stop_kept(tmp_path / "prefect")
        for path in (seen, shared):
            path.unlink() if path.is_file() else path.rmdir()
