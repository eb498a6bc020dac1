"""Shared task settings."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

# pvcheck's tasks read a live host: a cached answer would be a stale claim.
TASK_OPTS = {"cache_policy": NO_CACHE, "retries": 0}
