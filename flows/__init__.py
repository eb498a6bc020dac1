"""Prefect flows of pvcheck: the verification run, the independent review, the janitor, and
the served deployments (parameters in flows.params)."""

from pvcheck import quiet_prefect

quiet_prefect()
