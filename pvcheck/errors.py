"""The exception tree: every error pvcheck raises on purpose derives from PvcheckError.

Failures of checks are data (records with status fail); exceptions mean "cannot continue".
Each class carries the process exit code the CLI maps it to.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INCOMPLETE = 4  # nothing failed, but a gate was not proven (verdict INCOMPLETE)
EXIT_BUSY = 5
EXIT_LAB = 6
EXIT_PREFECT = 7


class PvcheckError(Exception):
    """Base class of every deliberate pvcheck error."""

    exit_code = EXIT_GATE_FAILED


class ConfigError(PvcheckError):
    """The config file is missing, malformed or invalid; names the file and the field."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = path, field, problem
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}")


class StateFileError(PvcheckError):
    """A machine-docs file cannot be parsed or written; it is left untouched."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")


class EnvironmentSettingError(PvcheckError):
    """An environment variable pvcheck reads holds a value it cannot use; names it."""

    exit_code = EXIT_USAGE


class TargetUnreachable(PvcheckError):
    """The docker engine (or the ssh path to it) cannot be reached."""

    exit_code = EXIT_UNREACHABLE


class LabError(PvcheckError):
    """The built-in lab cannot be brought up on this machine."""

    exit_code = EXIT_LAB


class HostBusy(PvcheckError):
    """Another pvcheck run holds the host lock."""

    exit_code = EXIT_BUSY


class PrefectUnavailable(PvcheckError):
    """The configured Prefect API does not answer (not a verdict about the host)."""

    exit_code = EXIT_PREFECT
