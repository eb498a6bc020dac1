"""The run's Prometheus gauges, parsed back from the text, and the textfile writer's refusals."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pvcheck.config import Config, load_config
from pvcheck.errors import ConfigError, StateFileError
from pvcheck.metrics import METRICS, metrics_text, publish, write_textfile
from pvcheck.records import Check, Gate, Status
from tests.helpers import LAB_CONFIG
from tests.unit.test_render import sample_report

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def cfg() -> Config:
    return load_config(LAB_CONFIG)


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for s in family.samples:
            assert s.labels["host"] == "lab", s
            key = (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "host"))
            out[key] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


def test_a_passing_run_gives_every_figure(cfg: Config) -> None:
    found = samples(metrics_text(sample_report(False), cfg))
    assert names(found) == set(METRICS)
    assert value(found, "pvcheck_verdict_pass") == 1
    assert value(found, "pvcheck_verdict_incomplete") == 0
    assert value(found, "pvcheck_gate_pass", gate="M1") == 1
    assert value(found, "pvcheck_gate_pass", gate="M2") == 1
    assert value(found, "pvcheck_last_run_timestamp_seconds") == 1795694409  # 2026-11-26 12:00:09
    assert value(found, "pvcheck_last_run_duration_seconds") == 9
    assert value(found, "pvcheck_network_endpoints", network="proxy") == 11
    assert value(found, "pvcheck_network_capacity", network="proxy") == 65533
    headroom = value(found, "pvcheck_network_headroom_ratio", network="proxy")
    assert headroom == pytest.approx((65533 - 11) / 65533)
    # The allocator's own count: 248 of 253 free with nothing listed, so 5 held and leaked;
    # 5 per 5 removed tasks at 20 removals a day, on 65522 free addresses.
    assert value(found, "pvcheck_allocator_leaked_addresses") == 5
    assert value(found, "pvcheck_exhaustion_days", network="proxy") == pytest.approx(65522 / 20)
    assert value(found, "pvcheck_vip_signature_lines", window="before") == 0
    assert value(found, "pvcheck_vip_signature_lines", window="run") == 0
    assert value(found, "pvcheck_gc_race_lines", window="before") == 1
    # The run window's scan had no GC-race patterns: absent, not 0.
    assert ("pvcheck_gc_race_lines", frozenset({("window", "run")})) not in found
    assert value(found, "pvcheck_residue_objects") == 0
    assert value(found, "pvcheck_check_duration_seconds", check="route.dashboard") == 0.012
    assert value(found, "pvcheck_check_duration_seconds", check="pre.pvfix-done") == 0


def test_a_failing_run_reads_0_and_an_unreadable_log_is_absent(cfg: Config) -> None:
    found = samples(metrics_text(sample_report(True), cfg))
    assert value(found, "pvcheck_verdict_pass") == 0
    assert value(found, "pvcheck_verdict_incomplete") == 0
    assert value(found, "pvcheck_gate_pass", gate="M1") == 0
    assert value(found, "pvcheck_gate_pass", gate="M2") == 1
    windows = {dict(labels)["window"] for name, labels in found if name.endswith("_lines")}
    assert windows == {"run"}  # the window before the run could not be read


def test_figures_a_run_did_not_produce_are_absent(cfg: Config) -> None:
    report = sample_report(False)
    report.allocator = None
    report.facts_after = None
    report.logs = report.run_logs = None
    report.checks = [c for c in report.checks if not c.id.startswith(("alloc.", "teardown."))]
    found = samples(metrics_text(report, cfg))
    assert value(found, "pvcheck_verdict_pass") == 0
    assert value(found, "pvcheck_verdict_incomplete") == 1
    assert value(found, "pvcheck_gate_pass", gate="M2") == 0
    for absent in (
        "pvcheck_allocator_leaked_addresses",
        "pvcheck_exhaustion_days",
        "pvcheck_network_endpoints",
        "pvcheck_network_headroom_ratio",
        "pvcheck_vip_signature_lines",
        "pvcheck_gc_race_lines",
        "pvcheck_residue_objects",
    ):
        assert absent not in names(found)
        assert absent not in metrics_text(report, cfg)  # no empty HELP/TYPE either


def test_no_leak_forecasts_never_and_an_uncounted_leak_none(cfg: Config) -> None:
    report = sample_report(False)
    assert report.allocator is not None and report.allocator.scratch_count is not None
    no_leak = dataclasses.replace(report.allocator.scratch_count, free=253)
    report.allocator.scratch_count = no_leak
    found = samples(metrics_text(report, cfg))
    assert value(found, "pvcheck_allocator_leaked_addresses") == 0
    assert math.isinf(value(found, "pvcheck_exhaustion_days", network="proxy"))
    report.allocator.scratch_count = None
    found = samples(metrics_text(report, cfg))
    assert "pvcheck_allocator_leaked_addresses" not in names(found)
    assert "pvcheck_exhaustion_days" not in names(found)


def test_residue_left_behind_is_counted_and_an_unchecked_one_absent(cfg: Config) -> None:
    report = sample_report(False)
    others = [c for c in report.checks if c.id != "teardown.residue"]
    left = Check("teardown.residue", Gate.M2, Status.FAIL, "none", "2 left: service a, network b")
    report.checks = [*others, left]
    assert value(samples(metrics_text(report, cfg)), "pvcheck_residue_objects") == 2
    lost = Check("teardown.residue", Gate.M2, Status.ERROR, "none", "not checked: gone")
    report.checks = [*others, lost]
    assert "pvcheck_residue_objects" not in names(samples(metrics_text(report, cfg)))


def test_a_check_met_twice_adds_its_durations(cfg: Config) -> None:
    report = sample_report(False)
    again = Check("route.dashboard", Gate.M1, Status.PASS, "HTTP 200", "ok", duration_s=0.5)
    report.checks.append(again)
    found = samples(metrics_text(report, cfg))
    seconds = value(found, "pvcheck_check_duration_seconds", check="route.dashboard")
    assert seconds == pytest.approx(0.512)


# --- config -------------------------------------------------------------------------------


def test_metrics_are_off_by_default_and_a_textfile_must_be_a_prom_file(tmp_path: Path) -> None:
    assert load_config(LAB_CONFIG).metrics.textfile is None
    cfg = load_config(LAB_CONFIG, {"metrics": {"textfile": "/var/lib/x/pvcheck.prom"}})
    assert cfg.metrics.textfile == Path("/var/lib/x/pvcheck.prom")
    with pytest.raises(ConfigError, match=r"metrics\.textfile.*\.prom"):
        load_config(LAB_CONFIG, {"metrics": {"textfile": "/var/lib/x/pvcheck.txt"}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(LAB_CONFIG, {"metrics": {"port": 9100}})


# --- the writer ---------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "textfile"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    return out


def test_the_textfile_is_replaced_whole_and_readable_by_the_exporter(
    cfg: Config, folder: Path
) -> None:
    path = folder / "pvcheck.prom"
    write_textfile(path, "a 1\n")
    write_textfile(path, metrics_text(sample_report(False), cfg))
    assert samples(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter's user reads it
    assert [p.name for p in folder.iterdir()] == ["pvcheck.prom"]  # no temp file left


def test_a_symlink_is_refused_and_its_target_untouched(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (folder / "pvcheck.prom").symlink_to(target)
    with pytest.raises(StateFileError, match="symbolic link"):
        write_textfile(folder / "pvcheck.prom", "a 1\n")
    assert target.read_text() == "keep\n"
    assert (folder / "pvcheck.prom").is_symlink()


def test_a_folder_every_user_can_write_is_refused(folder: Path) -> None:
    folder.chmod(0o777)
    with pytest.raises(StateFileError, match="writable by every user"):
        write_textfile(folder / "pvcheck.prom", "a 1\n")
    assert not any(folder.iterdir())


def test_a_missing_folder_is_refused_not_made(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="does not exist"):
        write_textfile(tmp_path / "nope" / "pvcheck.prom", "a 1\n")
    assert not (tmp_path / "nope").exists()


def test_a_folder_in_place_of_the_file_is_refused(folder: Path) -> None:
    (folder / "pvcheck.prom").mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        write_textfile(folder / "pvcheck.prom", "a 1\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies when run as root")
def test_as_root_a_folder_another_user_owns_is_refused(folder: Path) -> None:
    os.chown(folder, 1000, 1000)
    with pytest.raises(StateFileError, match="owned by uid 1000"):
        write_textfile(folder / "pvcheck.prom", "a 1\n")
    assert not any(folder.iterdir())


def test_publishing_is_off_without_a_textfile_and_never_raises(
    cfg: Config, tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert publish(sample_report(False), cfg) is None
    wanted = folder / "pvcheck.prom"
    on = load_config(LAB_CONFIG, {"metrics": {"textfile": str(wanted)}})
    assert publish(sample_report(True), on) == wanted
    assert value(samples(wanted.read_text()), "pvcheck_verdict_pass") == 0
    broken = load_config(LAB_CONFIG, {"metrics": {"textfile": str(tmp_path / "no/x.prom")}})
    with caplog.at_level(logging.WARNING, logger="pvcheck.metrics"):
        assert publish(sample_report(False), broken) is None
    assert "metrics not written" in caplog.text and "does not exist" in caplog.text


def test_the_docs_name_every_metric_and_the_example_alerts_use_real_ones() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    operations = (docs / "operations.md").read_text(encoding="utf-8")
    assert not [n for n in METRICS if f"`{n}`" not in operations]
    rules = yaml.safe_load((docs / "alerts.example.yml").read_text(encoding="utf-8"))
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in re.findall(r"\bpvcheck_[a-z_]+", e)}
    assert len(exprs) == 4 and used and used <= set(METRICS), used - set(METRICS)
