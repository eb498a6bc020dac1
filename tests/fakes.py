"""Small fakes for unit tests at the seams (the real ones are exercised against the lab)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pvcheck.config import RouteConfig
from pvcheck.hosts import BoundedRun
from pvcheck.seams import DeployOutcome, LogUnreadable, RouteObservation, Seams


class FakeSwarm:
    """The swarm seam (pvcheck.seams.SwarmApi) over a small in-memory engine: a network's
    verbose inspect, services, tasks and labelled objects; removals drop them."""

    def __init__(
        self,
        network_services: list[str] | None = None,
        services: list[dict[str, Any]] | None = None,
        inspect: dict[str, Any] | None = None,
        labelled: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.network_services = network_services or []
        self._services = services or []
        self._inspect = inspect
        # kind ("containers", "networks", ...) -> objects with "Id"/"ID", "Name", "Labels"
        self.labelled = labelled or {}
        self.removed: list[str] = []
        self.requests = 0
        self.lost = False
        self.free = {}

    def info(self) -> dict[str, Any]:
        self.requests += 1
        return {"ServerVersion": "fake", "Swarm": {"LocalNodeState": "active"}, "Name": "fake"}

    def network(self, name: str) -> dict[str, Any] | None:
        self.requests += 1
        made = [n for n in self.labelled.get("networks", []) if n.get("Name") == name]
        if made and "IPAM" in made[0]:
            return {"Name": name, "IPAM": made[0]["IPAM"], "Services": {}}
        if self._inspect is not None:
            return self._inspect if self._inspect.get("Name", name) == name else None
        return {
            "Name": name,
            "Services": {s: {"VIP": "", "Tasks": []} for s in self.network_services},
        }

    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.requests += 1
        if not labels:
            return self._services
        return [s for s in self._services if _has(s["Spec"].get("Labels") or {}, labels)]

    def tasks(self, service_ids: list[str] | None = None) -> list[dict[str, Any]]:
        self.requests += 1
        return []

    def _objects(self, kind: str, label: str | list[str]) -> list[dict[str, Any]]:
        self.requests += 1
        wanted = dict(x.partition("=")[::2] for x in ([label] if isinstance(label, str) else label))
        return [o for o in self.labelled.get(kind, []) if _has(o.get("Labels") or {}, wanted)]

    def containers(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self._objects("containers", label)

    def networks(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self._objects("networks", label)

    def volumes(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self._objects("volumes", label)

    def configs(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self._objects("configs", label)

    def secrets(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self._objects("secrets", label)

    def _remove(self, kind: str, key: str, value: str) -> None:
        self.removed.append(value)
        self.labelled[kind] = [o for o in self.labelled.get(kind, []) if o.get(key) != value]

    # The allocator, as far as the probes see it: free addresses per network ID ("" is
    # ingress); a probe service gets a VIP while its network has one free.
    free: dict[str, int]

    def all_networks(self) -> list[dict[str, Any]]:
        self.requests += 1
        return list(self.labelled.get("networks", []))

    def create_overlay(self, name: str, subnet: str, labels: dict[str, str]) -> str:
        net_id = f"net-{name}"
        self.labelled.setdefault("networks", []).append(
            {"Id": net_id, "Name": name, "Labels": labels, "IPAM": {"Config": [{"Subnet": subnet}]}}
        )
        self.free.setdefault(net_id, (1 << (32 - int(subnet.rsplit("/", 1)[1]))) - 3)
        return net_id

    def create_probe_service(
        self, name: str, image: str, labels: dict[str, str], network_id: str | None
    ) -> str:
        key = network_id or ""
        vips = []
        if self.free.get(key, 0) > 0:
            self.free[key] -= 1
            vips = [{"NetworkID": key or "ingress", "Addr": "10.0.0.9/24"}]
        svc = {
            "ID": f"svc-{name}",
            "Spec": {"Name": name, "Labels": labels},
            "Endpoint": {"VirtualIPs": vips},
            "_pool": key if vips else None,
        }
        self._services.append(svc)
        return str(svc["ID"])

    def service(self, service_id: str) -> dict[str, Any] | None:
        self.requests += 1
        return next((s for s in self._services if s["ID"] == service_id), None)

    def remove_service(self, service_id: str) -> None:
        self.removed.append(service_id)
        for s in self._services:
            if s["ID"] == service_id and s.get("_pool") is not None:
                self.free[s["_pool"]] += 1
        self._services = [s for s in self._services if s["ID"] != service_id]

    def remove_network(self, network_id: str) -> bool:
        self._remove("networks", "Id", network_id)
        return True

    def remove_container(self, container_id: str) -> None:
        self._remove("containers", "Id", container_id)

    def remove_volume(self, name: str) -> bool:
        self._remove("volumes", "Name", name)
        return True

    def remove_config(self, config_id: str) -> None:
        self._remove("configs", "ID", config_id)

    def remove_secret(self, secret_id: str) -> None:
        self._remove("secrets", "ID", secret_id)


def _has(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(k in labels and (not v or labels[k] == v) for k, v in wanted.items())


class FakeProber:
    """The HTTP seam: fixed answers per route name (a missing one is connection refused)."""

    def __init__(self, answers: dict[str, int] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []

    def probe(self, routes: Sequence[RouteConfig]) -> list[RouteObservation]:
        self.asked += [r.name for r in routes]
        return [
            RouteObservation(r.name, r.url, self.answers[r.name], None, 0.002, 1)
            if r.name in self.answers
            else RouteObservation(r.name, r.url, None, None, 0.002, 3, "ConnectError: refused")
            for r in routes
        ]


class FakeLogSource:
    """The docker log seam: fixed lines, or unreadable with a reason."""

    def __init__(self, lines: list[str] | None = None, unreadable: str | None = None) -> None:
        self._lines, self.unreadable = lines or [], unreadable

    def describe(self) -> str:
        return "fake docker log"

    def lines(self, since: datetime, until: datetime) -> Iterator[str]:
        if self.unreadable:
            raise LogUnreadable(self.unreadable)
        yield from self._lines


class FakeHost(BoundedRun):
    """The host-commands seam: commands run here, unchanged (and are recorded)."""

    remote = False

    def __init__(self) -> None:
        self.ran: list[list[str]] = []

    def describe(self) -> str:
        return "the fake host"

    def argv(self, argv: list[str]) -> list[str]:
        self.ran.append(list(argv))
        return list(argv)

    def how(self, command: str) -> str:
        return command

    def failure(self, stderr: str) -> str:
        return stderr


class FakeDriver:
    """The deploy-driver seam: returns a prepared outcome; `busy` lists other runs."""

    def __init__(self, outcome: DeployOutcome, busy: list[str] | None = None) -> None:
        self.outcome, self._busy, self.runs = outcome, busy or [], 0

    def run(self) -> DeployOutcome:
        self.runs += 1
        return self.outcome

    def busy(self) -> list[str]:
        return list(self._busy)


class FakeStacks:
    """The stack-tool seam (the docker CLI): records what was deployed and removed."""

    def __init__(self) -> None:
        self.deployed: dict[str, str] = {}  # stack -> the compose text it was given
        self.removed: list[str] = []
        self.secrets: dict[str, dict[str, str]] = {}  # name -> labels
        self._lock = threading.Lock()  # the allocator deploys from a thread pool

    def stack_deploy(
        self, stack: str, compose: str, env: Mapping[str, str] | None = None, where: str = ""
    ) -> None:
        with self._lock:
            self.deployed[stack] = compose

    def stack_rm(self, stacks: list[str]) -> None:
        with self._lock:
            self.removed += stacks

    def secret_create(self, name: str, value: bytes, labels: Mapping[str, str]) -> None:
        with self._lock:
            self.secrets[name] = dict(labels)  # never the value

    def exec(
        self, container: str, argv: list[str], stdin: bytes | None = None, max_stdout: int = 0
    ) -> bytes:
        raise NotImplementedError("no containers in the fake")

    def task_container(self, service: str, run_label: str) -> str:
        raise NotImplementedError("no containers in the fake")


def fake_seams(
    swarm: FakeSwarm | None = None,
    http: FakeProber | None = None,
    logs: FakeLogSource | None = None,
    host: FakeHost | None = None,
    driver: FakeDriver | None = None,
    stacks: FakeStacks | None = None,
) -> Seams:
    return Seams(
        swarm=swarm or FakeSwarm(),
        stacks=stacks or FakeStacks(),
        http=http or FakeProber(),
        logs=logs or FakeLogSource(),
        host=host or FakeHost(),
        driver=driver,
    )


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
