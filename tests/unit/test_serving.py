"""What `pvcheck serve` builds, prefect.yaml declares, and a fleet of hosts gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcheck.config import Config, load_config
from pvcheck.flows.serving import build_deployments, deployment_table, prefect_yaml, stagger
from tests.helpers import LAB_CONFIG, ROOT, write_config


def lab_configs(tmp_path: Path, names: tuple[str, ...] = ("lab",)) -> dict[str, Config]:
    out = {}
    for name in names:

        def rename(raw: dict[str, Any], name: str = name) -> None:
            raw["target"]["name"] = name

        (tmp_path / name).mkdir(mode=0o755)
        cfg = load_config(write_config(tmp_path / name, rename))
        out[cfg.target.name] = cfg
    return out


def test_the_committed_prefect_yaml_is_what_the_generator_writes_for_the_lab() -> None:
    cfg = load_config(LAB_CONFIG)
    assert (ROOT / "prefect.yaml").read_text() == prefect_yaml({cfg.target.name: cfg})


@pytest.mark.parametrize("names", [("lab",), ("lab", "lab-ssh")])
def test_prefect_yaml_declares_the_deployments_serve_builds(
    tmp_path: Path, names: tuple[str, ...]
) -> None:
    configs = lab_configs(tmp_path, names)
    declared = {
        d["name"]: d
        for d in yaml.safe_load(prefect_yaml(configs, "17 3 * * *", "Europe/Berlin"))["deployments"]
    }
    built = build_deployments(configs, "17 3 * * *", "Europe/Berlin")
    assert sorted(declared) == sorted(d.name for d in built) and len(built) == 4 * len(names)
    for dep in built:
        entry = declared[dep.name]
        assert entry["parameters"] == dep.parameters
        assert entry["description"] == dep.description
        assert entry["tags"] == dep.tags
        assert entry["entrypoint"].endswith(f":{dep.flow_name.removeprefix('pvcheck-')}")
        limit = dep.concurrency_options
        assert entry["concurrency_limit"] == {
            "limit": dep.concurrency_limit,
            "collision_strategy": str(limit.collision_strategy.value) if limit else None,
        }
        crons = [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules or []]
        assert [(s["cron"], s["timezone"]) for s in entry["schedules"]] == crons
    assert all(
        "path" not in str(d.parameters) and str(tmp_path) not in str(d.parameters) for d in built
    )


def test_a_fleet_gets_one_set_per_host_with_staggered_nights(tmp_path: Path) -> None:
    configs = lab_configs(tmp_path, ("alpha", "beta", "gamma"))
    rows = deployment_table(configs, "50 1 * * *", "UTC")
    nightly = {r["name"]: r for r in rows if r["cron"]}
    assert {n: r["cron"] for n, r in nightly.items()} == {
        "nightly-alpha": "50 1 * * *",
        "nightly-beta": "10 2 * * *",
        "nightly-gamma": "30 2 * * *",
    }
    for row in rows:
        host = row["name"].rsplit("-", 1)[1]
        assert row["parameters"]["target"] == host and f"host:{host}" in row["tags"]
        assert f"`{host}`" in row["description"]
    assert "time zone UTC" in nightly["nightly-beta"]["description"]


@pytest.mark.parametrize(
    ("cron", "index", "moved"),
    [
        ("17 1 * * *", 0, "17 1 * * *"),
        ("17 1 * * *", 1, "37 1 * * *"),
        ("17 1 * * *", 3, "17 2 * * *"),
        ("50 23 * * 6", 1, "10 0 * * 6"),
        ("*/15 1 * * *", 2, "*/15 1 * * *"),  # a step: kept as given
        ("17 1-3 * * *", 1, "17 1-3 * * *"),
    ],
)
def test_stagger(cron: str, index: int, moved: str) -> None:
    assert stagger(cron, index) == moved
