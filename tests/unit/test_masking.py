"""Masking of registered secrets in log records (messages, arguments, tracebacks) and in
what the CLI prints."""

from __future__ import annotations

import logging
import sys

import pytest

from pvcheck import masking

SECRET = "unit-secret-93f1c0-NEVER-PRINT"

pytestmark = pytest.mark.faults


def test_log_records_are_masked_in_message_args_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    masking.register(SECRET)
    log = logging.getLogger("pvcheck.test")
    with caplog.at_level(logging.INFO):
        log.info("token is %s", SECRET)
        try:
            raise RuntimeError(f"server said Bearer {SECRET}")
        except RuntimeError:
            log.exception("call failed")
    text = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert SECRET not in text
    assert "token is ***" in text and "Bearer ***" in text


def test_cli_output_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    masking.register(SECRET)
    with masking.masked_output():
        print(f"echo {SECRET}")
        print(f"err {SECRET}", file=sys.stderr)
    out, err = capsys.readouterr()
    assert (out, err) == ("echo ***\n", "err ***\n")


def test_short_values_are_not_secrets() -> None:
    masking.register("abc")
    assert masking.redact("abc def") == "abc def"
