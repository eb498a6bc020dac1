"""The textfile pvcheck writes, as a real node_exporter serves it: Debian's
prometheus-node-exporter with only its textfile collector, on a folder of the test's and a
loopback port of its own, scraped over HTTP."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pvcheck.config import load_config
from pvcheck.metrics import METRICS, metrics_text, write_textfile
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

pytestmark = pytest.mark.slow

EXPORTER = "prometheus-node-exporter"  # Debian's name for node_exporter
START_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A node_exporter of the test's own: the textfile collector on a folder of the test's,
    every other collector and its own process metrics off, listening on 127.0.0.1 only."""
    binary = shutil.which(EXPORTER) or shutil.which(EXPORTER, path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.skip(f"{EXPORTER} is not installed (apt-get install {EXPORTER}; .ci/bootstrap)")
    folder = tmp_path / "textfile"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    url = f"http://127.0.0.1:{_free_port()}/metrics"
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address={url.split('/')[2]}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={folder}",
            "--web.disable-exporter-metrics",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{EXPORTER} exited {proc.returncode}: {_tail(tmp_path)}")
            try:
                httpx.get(url, timeout=2.0).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{EXPORTER} did not answer in {START_S:g} s: {_tail(tmp_path)}")
                time.sleep(0.1)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "exporter.log").read_text(errors="replace")[-2000:]


def test_node_exporter_serves_the_gauges_with_their_labels(exporter: tuple[str, Path]) -> None:
    url, folder = exporter
    cfg = load_config(LAB_CONFIG)
    write_textfile(folder / "pvcheck.prom", metrics_text(sample_report(True), cfg))
    scraped = httpx.get(url, timeout=5.0)
    scraped.raise_for_status()
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    # The collector read the file without complaint, and served nothing else of the host.
    (error,) = families["node_textfile_scrape_error"].samples
    assert error.value == 0, scraped.text
    assert not [n for n in families if n.startswith(("node_cpu", "node_memory", "go_"))]
    ours = {n for n in families if n.startswith("pvcheck_")}
    # All but the GC-race count: the window before could not be read, the run's has none.
    assert ours == set(METRICS) - {"pvcheck_gc_race_lines"}
    for name in ours:
        assert families[name].type == "gauge", name
        assert all(s.labels["host"] == "lab" for s in families[name].samples), name

    def value(name: str, **labels: str) -> float:
        (sample,) = [s for s in families[name].samples if labels.items() <= s.labels.items()]
        return float(sample.value)

    assert value("pvcheck_verdict_pass") == 0
    assert value("pvcheck_gate_pass", gate="M1") == 0
    assert value("pvcheck_gate_pass", gate="M2") == 1
    assert value("pvcheck_network_endpoints", network="proxy") == 11
    assert value("pvcheck_allocator_leaked_addresses") == 5
    assert value("pvcheck_check_duration_seconds", check="route.dashboard") == 0.012
    assert value("pvcheck_vip_signature_lines", window="run") == 0

    # The next run replaces the file whole: the exporter serves the new values.
    write_textfile(folder / "pvcheck.prom", metrics_text(sample_report(False), cfg))
    again = {f.name: f for f in text_string_to_metric_families(httpx.get(url, timeout=5).text)}
    (verdict,) = again["pvcheck_verdict_pass"].samples
    assert verdict.value == 1
