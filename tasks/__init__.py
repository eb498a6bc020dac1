"""Prefect tasks of pvcheck: one thin wrapper per stage that calls the stage's `gather` (I/O,
through the run's seams) and `judge` (pure), and logs what it saw.

Each task logs the command equivalent of what it did, so a reviewer can re-verify a claim
from the task logs alone. The seams are built once per run (tasks.engine, pvcheck.wiring).
"""
