"""The temporary Prefect API: started only when none is configured."""

from __future__ import annotations

import threading

from prefect.settings import PREFECT_API_URL, temporary_settings

from pvcheck.api import ensure_prefect_api


def test_a_configured_api_is_used_as_is() -> None:
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert ensure_prefect_api() is None


def test_only_the_main_thread_starts_one() -> None:
    # The parent-death signal follows the thread that forked: a worker thread that ends
    # would take the server with it, so off the main thread Prefect starts its own.
    out: list[str | None] = ["not called"]
    with temporary_settings({PREFECT_API_URL: None}):
        worker = threading.Thread(target=lambda: out.__setitem__(0, ensure_prefect_api()))
        worker.start()
        worker.join()
    assert out == [None]
