"""Route probes: connect-to rewriting, retries, body text, and hard time bounds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pvcheck.config import HttpConfig, RouteConfig
from pvcheck.routes import probe_routes, request_target

FAST = HttpConfig(timeout_s=0.5, attempts=3, backoff_s=0.0, concurrency=4)


def test_request_target_keeps_host_and_sni() -> None:
    route = RouteConfig(
        name="d", url="https://drone.example.test/healthz?x=1", connect_to="127.0.0.1:8443"
    )
    url, headers, ext = request_target(route)
    assert url == "https://127.0.0.1:8443/healthz?x=1"
    assert headers == {"Host": "drone.example.test"}
    assert ext == {"sni_hostname": "drone.example.test"}
    plain = RouteConfig(name="p", url="http://a.test:8080/", connect_to="127.0.0.1:18080")
    assert request_target(plain) == ("http://127.0.0.1:18080/", {"Host": "a.test:8080"}, {})
    direct = RouteConfig(name="x", url="http://a.test/")
    assert request_target(direct) == ("http://a.test/", {}, {})


def test_probe_retries_until_accepted_and_records_attempts() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(502 if len(calls) < 3 else 200, text="ok")

    route = RouteConfig(
        name="d", url="http://d.test/", connect_to="127.0.0.1:18080", body_contains="ok"
    )
    (obs,) = probe_routes([route], FAST, transport=httpx.MockTransport(handler))
    assert (obs.status, obs.attempts, obs.body_has_text) == (200, 3, True)
    assert all(r.headers["host"] == "d.test" and r.url.port == 18080 for r in calls)


@pytest.mark.faults
def test_probe_gives_up_after_bounded_attempts() -> None:
    route = RouteConfig(name="d", url="http://d.test/")
    (obs,) = probe_routes(
        [route], FAST, transport=httpx.MockTransport(lambda r: httpx.Response(503))
    )
    assert (obs.status, obs.attempts) == (503, 3)


def test_redirect_is_judged_not_followed() -> None:
    route = RouteConfig(name="d", url="http://d.test/", expect_status=[303])
    transport = httpx.MockTransport(lambda r: httpx.Response(303, headers={"Location": "/login"}))
    (obs,) = probe_routes([route], FAST, transport=transport)
    assert (obs.status, obs.attempts) == (303, 1)


@pytest.fixture
def hanging_server() -> Iterator[tuple[int, int]]:
    """Two local ports: one accepts and never answers, one resets every connection."""
    hang, reset = socket.socket(), socket.socket()
    for s in (hang, reset):
        s.bind(("127.0.0.1", 0))
        s.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve_reset() -> None:
        reset.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = reset.accept()
            except TimeoutError:
                continue
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    def serve_hang() -> None:
        hang.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(hang.accept()[0])
            except TimeoutError:
                continue

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_hang, serve_reset)]
    for t in threads:
        t.start()
    yield hang.getsockname()[1], reset.getsockname()[1]
    stop.set()
    for t in threads:
        t.join()
    for s in [hang, reset, *held]:
        s.close()


@pytest.mark.faults
def test_hanging_and_resetting_routes_are_bounded(hanging_server: tuple[int, int]) -> None:
    hang_port, reset_port = hanging_server
    routes = [
        RouteConfig(name="hang", url="http://h.test/", connect_to=f"127.0.0.1:{hang_port}"),
        RouteConfig(name="reset", url="http://r.test/", connect_to=f"127.0.0.1:{reset_port}"),
    ]
    t0 = time.monotonic()
    hang, reset = probe_routes(routes, HttpConfig(timeout_s=0.3, attempts=2, backoff_s=0.0))
    assert time.monotonic() - t0 < 5  # 2 attempts x 0.3 s, concurrently
    assert hang.status is None and hang.error and "no answer within 0.3s" in hang.error
    assert reset.status is None and reset.error and reset.attempts == 2


@pytest.mark.parametrize(
    ("outside", "on_host", "says"),
    [
        (None, 200, "the way in is broken: it answers on the host through its own Traefik"),
        (
            None,
            None,
            "Traefik or the app is broken: not the expected answer from outside nor on the host",
        ),
        (200, None, None),  # the outside route passes: nothing to say about it
    ],
)
def test_a_route_checked_from_both_sides_says_which_side_is_broken(
    outside: int | None, on_host: int | None, says: str | None
) -> None:
    from pvcheck.records import Status
    from pvcheck.routes import Settings, judge
    from pvcheck.seams import RouteObservation

    url = "https://ci.example.test/"
    routes = [
        RouteConfig(name="dash", url=url),
        RouteConfig(name="dash-via-host", url=url, check_from="host", connect_to="127.0.0.1:443"),
        RouteConfig(name="other", url="https://other.example.test/"),  # one side only
    ]

    def seen(name: str, status: int | None) -> RouteObservation:
        return RouteObservation(name, url, status, None, 0.01, 1, None if status else "refused")

    checks = judge([seen("dash", outside), seen("dash-via-host", on_host), seen("other", None)],
                   Settings(routes))  # fmt: skip
    dash, _, other = checks
    assert (dash.status == Status.FAIL) == (outside is None)
    if says:
        assert dash.detail.endswith(f"; {says} (route.dash-via-host)")
    else:
        assert "broken:" not in dash.detail
    assert "broken:" not in other.detail.split("is down")[-1]  # no pair, no diagnosis
