"""The swarm seam: every docker engine call pvcheck makes goes through Swarm.

It wraps docker-py's low-level API with explicit timeouts, bounded retries of transient
errors, and a request counter (the benchmark checks facts cost O(1) requests).
An engine that cannot be reached raises TargetUnreachable (exit 3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from tenacity import (
    RetryCallState,
    retry_if_exception,
    wait_exponential,
)
from tenacity import (
    Retrying as _Retrying,
)

from pvcheck.config import TargetConfig
from pvcheck.errors import TargetUnreachable
from pvcheck.hosts import host_for

log = logging.getLogger(__name__)

# Labels pvcheck puts on what it creates. Deletion always filters on one of them.
LABEL_RUN = "pvcheck.run"
LABEL_LAB = "pvcheck.lab"
LABEL_STACK = "com.docker.stack.namespace"
LABEL_ROLE = "pvcheck.role"  # what a run-labelled object is for: recipe, throwaway, canary

# How often a wait re-reads engine state (one cheap read each time): a converged or released
# state is seen within a quarter second, so waits cost no more than the engine's own work.
POLL_S = 0.25

T = TypeVar("T")


_CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def _engine_away(exc: BaseException | None) -> bool:
    """The engine is down or restarting: no connection, or a node whose swarm manager is not
    back yet (503 right after dockerd starts). Worth waiting for within reconnect_s."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    return isinstance(exc, docker.errors.APIError) and exc.status_code == 503


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, docker.errors.APIError) and exc.status_code is not None:
        return exc.status_code >= 500 and "not found" not in str(exc).lower()
    return False


class Swarm:
    """A docker engine in swarm mode, reached by docker-py with timeouts and retries."""

    def __init__(self, client: docker.DockerClient, attempts: int = 3) -> None:
        self.client = client
        self.api = client.api
        self.attempts = attempts
        # Once connected, how long calls keep retrying an engine that stopped answering (a
        # dockerd restart) before the run fails; 0 = only `attempts` tries.
        self.reconnect_s = 0.0
        self.lost = False
        self.where = "docker engine"  # how errors name the target
        self.requests = 0

    @classmethod
    def connect(
        cls, base_url: str, timeout_s: float = 10.0, attempts: int = 3, reconnect_s: float = 0.0
    ) -> Swarm:
        """Connect and ping. An engine unreachable at start fails at once (exit 3); the
        reconnect window only applies to an engine that answered before."""
        try:
            client = docker.DockerClient(base_url=base_url, timeout=int(max(1, timeout_s)))
            swarm = cls(client, attempts)
            swarm.call(client.api.ping)
        except TargetUnreachable:
            raise
        except Exception as exc:
            raise TargetUnreachable(f"docker engine at {base_url} is unreachable: {exc}") from None
        swarm.reconnect_s = reconnect_s
        return swarm

    @classmethod
    def for_target(cls, target: TargetConfig) -> Swarm:
        """The target's engine: its socket here, or over ssh through a forwarded socket."""
        try:
            url = host_for(target).docker_url()
            swarm = cls.connect(url, target.timeout_s, target.api_attempts, target.reconnect_s)
        except TargetUnreachable as exc:
            raise TargetUnreachable(f"{target.docker_host}: {exc}") from None
        swarm.where = f"{target.docker_host}: docker engine"
        return swarm

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one docker API function, retrying transient failures a bounded number of times."""

        def before(state: RetryCallState) -> None:
            self.requests += 1
            if state.attempt_number > 1:
                log.warning(
                    "retrying docker call %s (attempt %d)", fn.__name__, state.attempt_number
                )

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if self.reconnect_s > 0 and not self.lost and _engine_away(exc):
                return state.seconds_since_start is not None and (
                    state.seconds_since_start >= self.reconnect_s
                )
            return bool(state.attempt_number >= self.attempts)

        retrying = _Retrying(
            stop=stop,
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(_transient),
            before=before,
            reraise=True,
        )
        try:
            return retrying(fn, *args, **kwargs)
        except (*_CONNECTION_ERRORS, docker.errors.APIError) as exc:
            if not _engine_away(exc):
                raise
            if self.reconnect_s > 0:
                self.lost = True  # rode out once already: later calls (teardown) fail fast
            raise TargetUnreachable(f"{self.where} stopped answering: {exc}") from None

    # --- reads -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self.call(self.api.info)

    def network(self, name: str) -> dict[str, Any] | None:
        """One verbose inspect: subnet plus every service's VIP and task IPs, swarm-wide."""
        try:
            found: dict[str, Any] = self.call(
                self.api.inspect_network, name, verbose=True, scope="swarm"
            )
            return found
        except docker.errors.NotFound:
            return None

    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]} if labels else None
        return self.call(self.api.services, filters=filters, status=True)

    def tasks(self, service_ids: list[str] | None = None) -> list[dict[str, Any]]:
        filters = {"service": service_ids} if service_ids else None
        return self.call(self.api.tasks, filters=filters)

    def containers(self, label: str | list[str]) -> list[dict[str, Any]]:
        return list(self.call(self.api.containers, all=True, filters={"label": label}))

    def networks(self, label: str | list[str]) -> list[dict[str, Any]]:
        return list(self.call(self.api.networks, filters={"label": label}))

    def volumes(self, label: str | list[str]) -> list[dict[str, Any]]:
        answer = self.call(self.api.volumes, filters={"label": label})
        return list(answer.get("Volumes") or [])

    def configs(self, label: str | list[str]) -> list[dict[str, Any]]:
        return self.call(self.api.configs, filters={"label": label})

    def secrets(self, label: str | list[str]) -> list[dict[str, Any]]:
        return list(self.call(self.api.secrets, filters={"label": label}))

    def all_networks(self) -> list[dict[str, Any]]:
        """Every network the engine knows (their subnets: a scratch network must not overlap)."""
        return list(self.call(self.api.networks))

    def service(self, service_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.call(self.api.inspect_service, service_id)
            return found
        except docker.errors.NotFound:
            return None

    # --- writes ----------------------------------------------------------------------------
    def create_overlay(self, name: str, subnet: str, labels: dict[str, str]) -> str:
        """A swarm overlay network of exactly `subnet`; its ID."""
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        created = self.call(
            self.api.create_network, name, driver="overlay", ipam=ipam, labels=labels
        )
        return str(created["Id"])

    def create_probe_service(
        self, name: str, image: str, labels: dict[str, str], network_id: str | None
    ) -> str:
        """A service with no task (0 replicas): it holds one VIP on `network_id`, or, with
        no network, one on ingress for a swarm-chosen published port. No task, so its
        removal cannot race the allocator."""
        kwargs: dict[str, Any] = {}
        if network_id:
            kwargs["networks"] = [network_id]
        else:
            kwargs["endpoint_spec"] = {"Ports": [{"Protocol": "tcp", "TargetPort": 80}]}
        created = self.call(
            self.api.create_service,
            docker.types.TaskTemplate(docker.types.ContainerSpec(image, ["true"])),
            name=name,
            labels=labels,
            mode=docker.types.ServiceMode("replicated", replicas=0),
            **kwargs,
        )
        return str(created["ID"])

    def remove_service(self, service_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.call(self.api.remove_service, service_id)

    def remove_network(self, network_id: str) -> bool:
        """True when gone; False while endpoints still hold it (the caller retries later)."""
        try:
            self.call(self.api.remove_network, network_id)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            # Removed meanwhile (`docker stack rm` races us): the engine says "not found"
            # without a 404.
            if "not found" in str(exc.explanation or "").lower():
                return True
            log.info("network %s not removable yet: %s", network_id, exc.explanation)
            return False
        return True

    def remove_container(self, container_id: str) -> None:
        try:
            self.call(self.api.remove_container, container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" is fine: the engine is doing what we asked.
            if exc.status_code != 409:
                raise

    def remove_volume(self, name: str) -> bool:
        try:
            self.call(self.api.remove_volume, name, force=True)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            return False
        return True

    def remove_config(self, config_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.call(self.api.remove_config, config_id)

    def remove_secret(self, secret_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.call(self.api.remove_secret, secret_id)
