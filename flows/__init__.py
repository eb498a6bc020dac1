"""Prefect flows of pvcheck: the verification run (and, later, the review run)."""
