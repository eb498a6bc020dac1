"""Route probes: HTTP(S) requests through the reverse proxy, concurrently, with bounded retries.

A route may set connect_to (like `curl --resolve`): the TCP connection goes to that address
while the Host header and the TLS SNI/certificate check keep the route's own host name.
Redirects are not followed: a 303 is an answer to judge, not a hop to take.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from pvcheck.config import HttpConfig, RouteConfig

MAX_BODY = 64 * 1024  # enough to find a marker; never buffer a huge page


@dataclass(frozen=True)
class RouteObservation:
    """What one route answered: the last attempt's status, or the error that ended it."""

    name: str
    url: str
    status: int | None
    body_has_text: bool | None
    latency_s: float
    attempts: int
    error: str | None = None


class _Unaccepted(Exception):
    """The route answered, but not as expected; worth another attempt."""


def request_target(route: RouteConfig) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL to connect to, headers, httpx extensions) for a route; pure."""
    url = httpx.URL(route.url)
    if not route.connect_to:
        return str(url), {}, {}
    host, _, port = route.connect_to.rpartition(":")
    default_port = 443 if url.scheme == "https" else 80
    host_header = (
        url.host if (url.port or default_port) == default_port else f"{url.host}:{url.port}"
    )
    target = url.copy_with(host=host.strip("[]"), port=int(port))
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return str(target), {"Host": host_header}, extensions


async def _probe(
    client: httpx.AsyncClient, route: RouteConfig, cfg: HttpConfig
) -> RouteObservation:
    url, headers, extensions = request_target(route)
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
                async with client.stream(
                    "GET", url, headers=headers, extensions=extensions
                ) as resp:
                    status = resp.status_code
                    if route.body_contains is not None:
                        body = b""
                        async for chunk in resp.aiter_bytes():
                            body += chunk
                            if len(body) >= MAX_BODY:
                                break
                        body_ok = route.body_contains.encode() in body
        except TimeoutError:
            error = f"no answer within {cfg.timeout_s:g}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
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
) -> list[RouteObservation]:
    sem = asyncio.Semaphore(cfg.concurrency)
    timeout = httpx.Timeout(cfg.timeout_s)
    limits = httpx.Limits(max_connections=cfg.concurrency)
    async with (
        httpx.AsyncClient(
            verify=True, timeout=timeout, transport=transport, limits=limits, trust_env=False
        ) as verified,
        httpx.AsyncClient(
            verify=False, timeout=timeout, transport=transport, limits=limits, trust_env=False
        ) as unverified,
    ):

        async def one(route: RouteConfig) -> RouteObservation:
            async with sem:
                return await _probe(verified if route.verify_tls else unverified, route, cfg)

        return list(await asyncio.gather(*(one(r) for r in routes)))


def probe_routes(
    routes: list[RouteConfig],
    cfg: HttpConfig,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[RouteObservation]:
    """Probe every route concurrently (bounded by cfg.concurrency); order follows `routes`."""
    return asyncio.run(probe_routes_async(routes, cfg, transport))
