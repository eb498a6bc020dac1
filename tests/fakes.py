"""Small fakes for unit tests at the seams (the real ones are exercised against the lab)."""

from __future__ import annotations

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
