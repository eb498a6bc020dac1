"""Stage routes (M1): every configured route through the reverse proxy answers as expected.
Probes are HTTP(S) requests, concurrent, with bounded retries; `judge` holds the one rule of
"answered as expected", and `recheck` re-probes the core routes before new test traffic.

A route may set connect_to (like `curl --resolve`): the TCP connection goes to that address
while the Host header and the TLS SNI/certificate check keep the route's own host name.
Redirects are not followed: a 303 is an answer to judge, not a hop to take.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from pvcheck.config import Config, HttpConfig, RouteConfig
from pvcheck.records import Check, Family, Gate, Status, skipped
from pvcheck.seams import HostCommands, RouteObservation, Seams

MAX_BODY = 64 * 1024  # enough to find a marker; never buffer a huge page


class _Unaccepted(Exception):
    """The route answered, but not as expected; worth another attempt."""


def default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def request_target(route: RouteConfig) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL to connect to, headers, httpx extensions) for a route; pure."""
    url = httpx.URL(route.url)
    if not route.connect_to:
        return str(url), {}, {}
    host, _, port = route.connect_to.rpartition(":")
    port_given = url.port is not None and url.port != default_port(url)
    host_header = f"{url.host}:{url.port}" if port_given else url.host
    target = url.copy_with(host=host.strip("[]"), port=int(port))
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return str(target), {"Host": host_header}, extensions


class _NoAnswer(Exception):
    """The attempt got no HTTP answer; the message says why."""


Fetch = Callable[[RouteConfig], Awaitable[tuple[int, bytes]]]


def http_fetch(client: httpx.AsyncClient) -> Fetch:
    """One GET from here (status, up to MAX_BODY of the body)."""

    async def fetch(route: RouteConfig) -> tuple[int, bytes]:
        url, headers, extensions = request_target(route)
        try:
            async with client.stream("GET", url, headers=headers, extensions=extensions) as resp:
                body = b""
                if route.body_contains is not None:
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) >= MAX_BODY:
                            break
                return resp.status_code, body
        except httpx.HTTPError as exc:
            raise _NoAnswer(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from None

    return fetch


def host_fetch(host: HostCommands, cfg: HttpConfig) -> Fetch:
    """One GET made by curl on the target host (`ssh host curl --connect-to ...`). Only the
    head and the first MAX_BODY bytes come back: curl is stopped past them."""

    async def fetch(route: RouteConfig) -> tuple[int, bytes]:
        argv = curl_argv(route, cfg.timeout_s)
        ssh_timeout_s = cfg.timeout_s + 15  # curl's own deadline plus the ssh connection
        try:
            rc, out, err = await asyncio.to_thread(
                host.run, argv, ssh_timeout_s, None, MAX_HEAD + MAX_BODY
            )
        except subprocess.TimeoutExpired:
            raise _NoAnswer(f"ssh curl gave no answer within {ssh_timeout_s:g}s") from None
        status, body = parse_curl_output(out.encode("utf-8", errors="replace"))
        if status is None or (rc != 0 and not body):
            raise _NoAnswer(f"curl on the host exited {rc}: {err.strip()[-200:]}")
        return status, body[:MAX_BODY]

    return fetch


MAX_HEAD = 16 * 1024
_STATUS_LINE = re.compile(rb"^HTTP/[0-9.]+ ([0-9]{3})")


def parse_curl_output(out: bytes) -> tuple[int | None, bytes]:
    """Pure: (status, body) of `curl -D - -o -` output; informational (1xx) heads skipped."""
    rest = out
    while True:
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = rest.partition(b"\n\n")
        match = _STATUS_LINE.match(head)
        if match is None:
            return None, b""
        status = int(match.group(1))
        if 100 <= status < 200 and sep:
            rest = body
            continue
        return status, body


def curl_route_options(route: RouteConfig) -> list[str]:
    """Pure: curl's options that reach a route as pvcheck does: where to connect, and how
    the certificate is verified (the route's CA bundle, or not at all when turned off)."""
    url = httpx.URL(route.url)
    argv = []
    if route.connect_to:
        port = url.port or default_port(url)
        argv += ["--connect-to", f"{url.host}:{port}:{route.connect_to}"]
    if not route.verify_tls:
        argv.append("-k")
    elif route.ca_bundle is not None and url.scheme == "https":
        argv += ["--cacert", str(route.ca_bundle)]
    return argv


def curl_argv(route: RouteConfig, timeout_s: float | None = None) -> list[str]:
    """Pure: the curl that fetches a route as pvcheck does. With a timeout: the one a check
    from the host runs (the response head, then the body); without: the one a reviewer
    pastes (the status code only)."""
    if timeout_s is None:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n"]
        return [*argv, *curl_route_options(route), route.url]
    argv = ["curl", "-s", "-m", f"{timeout_s:g}", "-D", "-", "-o", "-"]
    return [*argv, *curl_route_options(route), "--", route.url]


def _verify(route: RouteConfig) -> ssl.SSLContext | bool:
    if not route.verify_tls:
        return False
    if route.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(route.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise _NoAnswer(f"CA bundle {route.ca_bundle} cannot be read: {exc}") from None


async def _probe(fetch: Fetch, route: RouteConfig, cfg: HttpConfig) -> RouteObservation:
    attempts = 0
    status: int | None = None
    body_ok: bool | None = None
    error: str | None = None
    latency = 0.0

    async def attempt() -> None:
        nonlocal attempts, status, body_ok, error, latency
        attempts += 1
        status, body_ok, error = None, None, None
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(cfg.timeout_s):
                status, body = await fetch(route)
            if route.body_contains is not None:
                body_ok = route.body_contains.encode() in body
        except TimeoutError:
            error = f"no answer within {cfg.timeout_s:g}s"
        except _NoAnswer as exc:
            error = str(exc)
        finally:
            latency = time.monotonic() - t0
        if error or status not in route.expect_status or body_ok is False:
            raise _Unaccepted

    try:
        async for try_ in AsyncRetrying(
            stop=stop_after_attempt(cfg.attempts),
            wait=wait_exponential(multiplier=cfg.backoff_s, max=10),
            reraise=False,
        ):
            with try_:
                await attempt()
    except RetryError:
        pass
    return RouteObservation(route.name, route.url, status, body_ok, latency, attempts, error)


async def probe_routes_async(
    routes: list[RouteConfig],
    cfg: HttpConfig,
    transport: httpx.AsyncBaseTransport | None = None,
    host: HostCommands | None = None,
) -> list[RouteObservation]:
    sem = asyncio.Semaphore(cfg.concurrency)
    timeout = httpx.Timeout(cfg.timeout_s)
    limits = httpx.Limits(max_connections=cfg.concurrency)
    async with contextlib.AsyncExitStack() as stack:
        # One client per way of verifying TLS (system CAs, a route's bundle, none).
        clients: dict[tuple[bool, str | None], httpx.AsyncClient] = {}
        from_host = host_fetch(host, cfg) if host is not None else None

        def client_for(route: RouteConfig) -> httpx.AsyncClient:
            key = (route.verify_tls, str(route.ca_bundle) if route.ca_bundle else None)
            if key not in clients:
                clients[key] = httpx.AsyncClient(
                    verify=_verify(route),
                    timeout=timeout,
                    transport=transport,
                    limits=limits,
                    trust_env=False,
                )
                stack.push_async_callback(clients[key].aclose)
            return clients[key]

        async def one(route: RouteConfig) -> RouteObservation:
            async with sem:
                if route.check_from == "host" and from_host is not None:
                    return await _probe(from_host, route, cfg)
                try:
                    client = client_for(route)
                except _NoAnswer as exc:
                    return RouteObservation(route.name, route.url, None, None, 0.0, 0, str(exc))
                return await _probe(http_fetch(client), route, cfg)

        return list(await asyncio.gather(*(one(r) for r in routes)))


def probe_routes(
    routes: list[RouteConfig],
    cfg: HttpConfig,
    transport: httpx.AsyncBaseTransport | None = None,
    host: HostCommands | None = None,
) -> list[RouteObservation]:
    """Probe every route concurrently (bounded by cfg.concurrency); order follows `routes`.
    A route with check_from = "host" is fetched by curl on `host` (over ssh)."""
    return asyncio.run(probe_routes_async(routes, cfg, transport, host))


# --- the stage -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    routes: list[RouteConfig]

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        return cls(list(cfg.routes))

    @property
    def core(self) -> Settings:
        return Settings([r for r in self.routes if r.core])

    @property
    def core_ids(self) -> set[str]:
        return {Family.ROUTE.id(r.name) for r in self.routes if r.core}


def gather(seams: Seams, settings: Settings) -> list[RouteObservation]:
    return seams.http.probe(settings.routes)


def judge(probes: list[RouteObservation], settings: Settings) -> list[Check]:
    checks = [route_answer(r, p) for r, p in zip(settings.routes, probes, strict=True)]
    return told_apart(settings.routes, checks)


# What a failing route's other side says: (where it was checked from, the other side's status).
_SIDES = {
    ("here", Status.PASS): "the way in is broken: it answers on the host through its own Traefik",
    ("host", Status.PASS): "the host's own way to Traefik is broken: it answers from outside",
    ("here", Status.FAIL): "Traefik or the app is broken: not the expected answer from outside "
    "nor on the host",
    ("host", Status.FAIL): "Traefik or the app is broken: not the expected answer on the host "
    "nor from outside",
}


def told_apart(routes: list[RouteConfig], checks: list[Check]) -> list[Check]:
    """Pure: a route checked both from here and on the host through its own Traefik says
    which side is broken when it fails: the way in (name resolution, firewall, the host's
    address), or what is behind it (Traefik, the app)."""

    # A pair asks the same of both sides; two routes of one side and URL pair with nothing.
    def key(r: RouteConfig) -> tuple[object, ...]:
        return (r.url, tuple(r.expect_status), r.body_contains, r.verify_tls)

    sides: dict[tuple[object, ...], list[Check]] = {}
    for route, check in zip(routes, checks, strict=True):
        sides.setdefault((*key(route), route.check_from), []).append(check)
    by_side = {k: v[0] for k, v in sides.items() if len(v) == 1}
    out = []
    for route, check in zip(routes, checks, strict=True):
        other = by_side.get((*key(route), "host" if route.check_from == "here" else "here"))
        why = _SIDES.get((route.check_from, other.status)) if other is not None else None
        if check.status == Status.FAIL and other is not None and why:
            check = dataclasses.replace(check, detail=f"{check.detail}; {why} ({other.id})")
        out.append(check)
    return out


def route_answer(route: RouteConfig, obs: RouteObservation) -> Check:
    want = "/".join(str(s) for s in route.expect_status)
    expected = f"HTTP {want}" + (
        f" with body containing {route.body_contains!r}" if route.body_contains else ""
    )
    if not route.verify_tls:
        expected += " (TLS verification OFF for this route)"  # shown in the STATUS table
    if obs.status is None:
        found = obs.error or "no answer"
    else:
        found = f"HTTP {obs.status}" + (
            "" if obs.body_has_text is not False else ", body text missing"
        )
    ok = obs.answers(route)
    detail = f"{obs.attempts} attempt(s), {obs.latency_s * 1000:.0f} ms"
    if not route.verify_tls:
        detail += "; TLS verification OFF for this route"
    if not ok:
        detail = f"route {route.name} ({route.url}) is down: {found}; " + detail
    return Check(
        Family.ROUTE.id(route.name),
        Gate.M1,
        Status.PASS if ok else Status.FAIL,
        expected,
        found,
        detail,
        duration_s=obs.latency_s,
    )


def traffic_blockers(gating: list[Check], route_checks: list[Check], settings: Settings) -> str:
    """Pure: why no new test traffic may start ("" when it may): a failed precondition or
    control-plane service, or a core route that is down."""
    blocked = [c.id for c in gating if c.status != Status.PASS]
    core = settings.core_ids
    blocked += [c.id for c in route_checks if c.id in core and c.status != Status.PASS]
    return (
        "" if not blocked else "no new test traffic: fix routing first (" + ", ".join(blocked) + ")"
    )


def recheck(seams: Seams, settings: Settings, before: str) -> Check:
    """Re-probe the core routes right before a stage starts new test traffic, so an outage
    of the reverse proxy seen mid-run stops the run from adding load to a broken host."""
    core = settings.core
    return routes_still_up(before, judge(gather(seams, core), core))


def routes_still_up(before: str, checks: list[Check]) -> Check:
    """The core routes re-probed just before a stage starts new test traffic."""
    down = [f"{c.id}: {c.found}" for c in checks if c.status != Status.PASS]
    return Check(
        Family.ROUTE.id(f"recheck-{before}"),
        Gate.M1,
        Status.FAIL if down else Status.PASS,
        f"every core route still answers before the {before} stage",
        "; ".join(down) if down else f"{len(checks)} core route(s) answer",
        "a reverse-proxy outage during the run: no new test traffic was started" if down else "",
        duration_s=max((c.duration_s for c in checks), default=0.0),
    )


def traffic_stopped(check_id: str, expected: str, recheck: Check) -> Check:
    """A traffic stage not started because its route re-check failed."""
    reason = f"skipped: no new test traffic, core routes are down ({recheck.found})"
    return skipped(check_id, Gate.M2, expected, reason)
