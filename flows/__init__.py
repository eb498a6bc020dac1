"""Prefect flows of pvcheck: the verification run (and, later, the review run)."""

from pvcheck import quiet_prefect

quiet_prefect()
