"""Small fakes for unit tests at the seams (the real ones are exercised against the lab)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSwarm:
    """Answers the read calls the deploy drivers and detectors make."""

    def __init__(
        self,
        network_services: list[str] | None = None,
        services: list[dict[str, Any]] | None = None,
    ) -> None:
        self.network_services = network_services or []
        self._services = services or []
        self.requests = 0

    def network(self, name: str) -> dict[str, Any]:
        self.requests += 1
        return {
            "Name": name,
            "Services": {s: {"VIP": "", "Tasks": []} for s in self.network_services},
        }

    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.requests += 1
        return self._services


class DroneState:
    def __init__(self, final: str, steps: dict[str, str], polls_to_finish: int = 2) -> None:
        self.final, self.steps, self.polls_to_finish = final, steps, polls_to_finish
        self.creates: list[str] = []
        self.polls = 0
        self.stopped: list[int] = []
        self.auth: set[str] = set()


@contextlib.contextmanager
def drone_server(token: str, final: str = "success") -> Iterator[tuple[str, DroneState]]:
    """A small Drone API on 127.0.0.1 (create, read, stop, list builds) for one repo, coop/ci."""
    state = DroneState(final, {})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            state.auth.add(got)
            if got != f"Bearer {token}":
                self._send(401, {"message": "Unauthorized"})
                return False
            return True

        def do_POST(self) -> None:
            if self._authorized() and self.path.startswith("/api/repos/coop/ci/builds?"):
                state.creates.append(self.path)
                self._send(200, {"id": 1, "number": 42, "status": "pending"})

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path == "/api/repos/coop/ci/builds/42":
                state.polls += 1
                done = state.polls >= state.polls_to_finish
                steps = [{"name": n, "status": s} for n, s in state.steps.items()]
                self._send(
                    200,
                    {
                        "number": 42,
                        "status": state.final if done else "running",
                        "stages": [{"name": "recipe", "steps": steps}],
                    },
                )
            elif self.path == "/api/repos/coop/ci/builds":
                self._send(200, [])

        def do_DELETE(self) -> None:
            if self._authorized():
                state.stopped.append(42)
                self._send(200, {})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()
