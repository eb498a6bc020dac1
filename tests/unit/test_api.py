"""The Prefect APIs pvcheck uses: a configured one as is (when it answers), a temporary one
otherwise; the served one never without credentials, never someone else's."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from pvcheck.api import ensure_prefect_api, free_port
from pvcheck.errors import PrefectUnavailable, PvcheckError


@contextlib.contextmanager
def fake_api(anonymous_ok: bool) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers /api/health, and /api/flows/filter with 200
    (anonymous calls accepted) or 401."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/api/health" else 404, True)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(200 if anonymous_ok else 401, [])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()


def test_a_configured_api_is_used_as_is() -> None:
    with fake_api(anonymous_ok=False) as url, temporary_settings({PREFECT_API_URL: url}):
        assert ensure_prefect_api() is None


@pytest.mark.faults
def test_a_configured_api_that_is_down_is_exit_7_not_a_verdict() -> None:
    with (
        temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}),
        pytest.raises(PrefectUnavailable, match="does not answer /health") as info,
    ):
        ensure_prefect_api()
    assert info.value.exit_code == 7


def test_only_the_main_thread_starts_one() -> None:
    # The parent-death signal follows the thread that forked: a worker thread that ends
    # would take the server with it, so off the main thread Prefect starts its own.
    out: list[str | None] = ["not called"]
    with temporary_settings({PREFECT_API_URL: None}):
        worker = threading.Thread(target=lambda: out.__setitem__(0, ensure_prefect_api()))
        worker.start()
        worker.join()
    assert out == [None]


@pytest.mark.faults
def test_serve_refuses_an_api_anyone_can_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pvcheck.flows.serving import ensure_server

    with fake_api(anonymous_ok=True) as url:
        monkeypatch.setenv("PREFECT_API_URL", url)
        with pytest.raises(PvcheckError, match="accepts calls without credentials"):
            ensure_server(tmp_path)
    with fake_api(anonymous_ok=False) as url:
        monkeypatch.setenv("PREFECT_API_URL", url)
        assert ensure_server(tmp_path) == url


@pytest.mark.faults
def test_serve_never_attaches_to_a_port_someone_else_holds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pvcheck.flows.serving import ensure_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with fake_api(anonymous_ok=False) as url:  # a squatter that even looks like Prefect
        port = int(url.split(":")[2].split("/")[0])
        with pytest.raises(PvcheckError, match=f"127.0.0.1:{port} is already taken"):
            ensure_server(tmp_path, port=port)


def test_the_served_auth_string_is_root_only_and_kept(tmp_path: Path) -> None:
    from pvcheck.api import auth_string

    path = tmp_path / "prefect-api-auth"
    first = auth_string(path)
    assert first.startswith("pvcheck:") and len(first) > 30
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth_string(path) == first


def test_served_parameters_name_a_pinned_config_never_a_path(tmp_path: Path) -> None:
    from pvcheck.flows.serving import build_deployments
    from pvcheck.pinned import pin, pinned_path
    from tests.helpers import write_config

    config = write_config(tmp_path)
    configs = pin([str(config)])
    from prefect.utilities.callables import parameter_schema

    from pvcheck.flows.janitor import janitor
    from pvcheck.flows.review import review
    from pvcheck.flows.verify import verify

    for flow in (verify, review, janitor):  # the schema the server shows the UI form
        schema = parameter_schema(flow).model_dump()
        props = schema["properties"]
        assert props["target"]["type"] == "string" and props["target"]["maxLength"] == 63
        assert "config" not in props and "config_path" not in json.dumps(schema)
        assert schema["definitions"] == {}  # flat: no nested model, no `| None` toggle
    for dep in build_deployments(configs):
        assert str(tmp_path) not in json.dumps(dep.parameters)
        assert dep.parameters["target"] == "lab"
    assert pinned_path("lab") == config.resolve()
    from pvcheck.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'/etc/evil\.toml' is not one of"):
        pinned_path("/etc/evil.toml")
    from pvcheck.flows.verify import RunParameters

    with pytest.raises(ValueError, match="config_path"):
        RunParameters.from_flow({"config_path": "/tmp/mine.toml"})


@pytest.mark.faults
def test_a_listener_is_ours_only_when_our_process_holds_the_socket() -> None:
    import subprocess
    import sys
    import time

    from pvcheck.api import listener_is_ours

    listen = (
        "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        " print(s.getsockname()[1], flush=True); time.sleep(30)"
    )
    squatter = subprocess.Popen([sys.executable, "-c", listen], stdout=subprocess.PIPE, text=True)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert squatter.stdout is not None
        port = int(squatter.stdout.readline())
        time.sleep(0.1)
        assert listener_is_ours(port, squatter.pid)
        assert not listener_is_ours(port, ours.pid)  # it answers, but is not ours
        assert not listener_is_ours(free_port(), ours.pid)  # nothing listens
    finally:
        squatter.kill()
        ours.kill()
