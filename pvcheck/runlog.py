"""pvcheck's own module loggers (`pvcheck.stackcli`, `pvcheck.deploy.*`, …) inside Prefect runs.

Inside a flow or task run, each record goes to that run's logger, so it reaches the Prefect
UI's task logs and the terminal with the task's name, like the tasks' own lines (the
`docker stack deploy` command, the Drone build link, the harness's output). Outside a run
(`pvcheck lab up`) records go to stderr: warnings always, the rest with `-v`.
"""

from __future__ import annotations

import logging
import sys

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

ROOT = "pvcheck"


class ToRunLogger(logging.Handler):
    """Forward a record to the current Prefect run's logger, else to stderr above a level."""

    def __init__(self, terminal_level: int) -> None:
        super().__init__()
        self.terminal_level = terminal_level
        self.terminal = logging.StreamHandler(sys.stderr)
        self.terminal.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            run_logger = get_run_logger()
        except MissingContextError:
            if record.levelno >= self.terminal_level:
                self.terminal.handle(record)
            return
        try:
            run_logger.log(
                record.levelno,
                "%s: %s",
                record.name.removeprefix(f"{ROOT}."),
                record.getMessage(),
                exc_info=record.exc_info,
            )
        except Exception:  # a log line must never end a run
            self.handleError(record)


def install(verbose: bool | None = None) -> None:
    """Route the `pvcheck` loggers. Idempotent: a flow calls it with None and keeps what
    the command line chose; `-v` (verbose) also shows every docker API request."""
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if isinstance(h, ToRunLogger)), None)
    if handler is None:
        handler = ToRunLogger(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the run logger (or stderr) shows it once
    if verbose is not None:
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.terminal_level = logging.DEBUG if verbose else logging.WARNING
        for name in ("docker", "urllib3"):
            logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
