"""Prefect tasks of pvcheck: thin typed wrappers that gather facts (I/O) and log what they saw.

Judging lives in pvcheck.judge (pure); each task logs the command equivalent of what it did
so a reviewer can re-verify a claim from the task logs alone.
"""
