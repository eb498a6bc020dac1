"""A headless Chromium (Debian's) driven over the DevTools protocol: enough to open a page,
run a line of JavaScript in it and read what it shows. No screenshots are kept."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect
from websockets.sync.connection import Connection

from pvcheck.api import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for_text(self, *texts: str, timeout_s: float = 60) -> str:
        """The page's text once it shows every one of `texts` (AssertionError otherwise)."""
        deadline = time.monotonic() + timeout_s
        shown = ""
        while time.monotonic() < deadline:
            shown = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(t in shown for t in texts):
                return str(shown)
            time.sleep(0.5)
        missing = [t for t in texts if t not in shown]
        raise AssertionError(f"the page never showed {missing}; it showed: {shown[:2000]}")


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    assert CHROMIUM is not None
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # as root in a container; the page is our own local UI
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (httpx.HTTPError, StopIteration):
                assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.3)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tab = Page(ws)
            tab.call("Page.enable")
            tab.call("Runtime.enable")
            # A desktop window, as an operator's: at headless Chromium's own 780x437 the
            # Prefect UI lays a run page out without its log lines.
            tab.call(
                "Emulation.setDeviceMetricsOverride",
                width=1440,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield tab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
