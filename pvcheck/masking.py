"""Secret masking: once a secret value is known to the process (the Drone token, say), it is
replaced by *** in every log record and in every file, report and artifact pvcheck writes,
even when the value comes back inside something a remote service sent (an echoed header, a
step name), the way CI systems mask their secrets."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

MASK = "***"
# Shorter values would mask ordinary words; such a "secret" is refused by the config anyway.
MIN_SECRET_LEN = 6

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_installed = False


def register(value: str) -> None:
    """Mask `value` from now on, in this process."""
    global _secrets
    if len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        _secrets = _secrets | {value}
        _install_log_masking()


def secrets() -> frozenset[str]:
    """Every value masked so far."""
    return frozenset(_secrets)


def redact(text: str) -> str:
    for value in _secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


def _install_log_masking() -> None:
    """Mask at record creation, so every logger and handler (Prefect's API handler included)
    only ever sees the masked message."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def masked_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message or record.exc_info:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return record

    logging.setLogRecordFactory(masked_record)
    _installed = True


class _MaskedStream(io.TextIOBase):
    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()


@contextlib.contextmanager
def masked_output() -> Iterator[None]:
    """stdout and stderr masked for the duration (what the CLI prints, errors included)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _MaskedStream(out), _MaskedStream(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
