"""Config loading: both shipped configs load; every kind of bad input is exit 2 naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvcheck.cli import main
from pvcheck.config import MAX_ALLOCATOR_BATCH, load_config
from pvcheck.errors import ConfigError
from tests.helpers import CCCI_CONFIG, LAB_CONFIG, write_config


@pytest.mark.parametrize("path", [LAB_CONFIG, CCCI_CONFIG], ids=["lab", "cc-ci"])
def test_shipped_configs_are_valid(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid" in out
    cfg = load_config(path)
    assert cfg.network.name == "proxy"
    assert cfg.network.subnet.endswith("/16")


def test_cc_ci_config_carries_the_documented_facts() -> None:
    cfg = load_config(CCCI_CONFIG)
    assert cfg.network.subnet == "10.10.0.0/16"
    assert "drone_ci_commoninternet_net_app" in cfg.services.control_plane
    assert len(cfg.services.control_plane) == 7
    statuses = {r.name: r.expect_status for r in cfg.routes}
    assert statuses["drone-ui"] == [303] and statuses["dashboard"] == [200]
    assert all(r.verify_tls and r.connect_to == "127.0.0.1:443" for r in cfg.routes)


def test_relative_paths_resolve_against_the_config_folder() -> None:
    cfg = load_config(LAB_CONFIG)
    assert cfg.guard is not None and cfg.guard.file == LAB_CONFIG.parent / "upgrade-all/SKILL.md"
    assert cfg.docs.dir == (LAB_CONFIG.parent / "../machine-docs").resolve()


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for part in section.split("."):
            node = node[part] if not part.isdigit() else node[int(part)]  # type: ignore[index]
        node[key] = value

    return mutate


BAD_INPUTS = [
    ("unknown key", _set("network", "colour", "blue"), "network.colour", "unknown key"),
    ("invalid CIDR", _set("network", "subnet", "10.10.0.0/33"), "network.subnet", "CIDR"),
    ("host bits set", _set("network", "subnet", "10.10.1.0/16"), "network.subnet", "CIDR"),
    ("bad URL", _set("routes.0", "url", "not a url"), "routes[0].url", "URL"),
    ("ftp URL", _set("routes.1", "url", "ftp://x.test/"), "routes[1].url", "http(s)"),
    ("zero count", _set("allocator", "batch", 0), "allocator.batch", "greater than or equal"),
    ("negative count", _set("http", "attempts", -1), "http.attempts", "greater than or equal"),
    (
        "batch above cap",
        _set("allocator", "batch", MAX_ALLOCATOR_BATCH + 1),
        "allocator.batch",
        "less than or equal to 20",
    ),
    (
        "concurrency above cap",
        _set("allocator", "concurrency", 11),
        "allocator.concurrency",
        "less than or equal to 10",
    ),
    ("rounds above cap", _set("allocator", "rounds", 6), "allocator.rounds", "less than or equal"),
    ("wrong type", _set("http", "timeout_s", "fast"), "http.timeout_s", "valid number"),
    (
        "secret in file",
        _set("deploy", "drone", {"url": "http://127.0.0.1:1/", "repo": "a/b", "token": "s3cr3t"}),
        "deploy.drone.token",
        "secret",
    ),
    ("hostile name", _set("network", "name", "proxy; rm -rf /"), "network.name", "valid name"),
    ("path traversal name", _set("docs", "phase", "../../etc"), "docs.phase", "valid name"),
    (
        "bad connect_to",
        _set("routes.0", "connect_to", "127.0.0.1"),
        "routes[0].connect_to",
        "HOST:PORT",
    ),
    (
        "empty services",
        _set("services", "control_plane", []),
        "services.control_plane",
        "at least 1",
    ),
    (
        "bad status",
        _set("routes.0", "expect_status", [999]),
        "routes[0].expect_status[0]",
        "less than",
    ),
    ("file log without path", _set("logs", "path", None), "logs", "needs path"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [b[1:] for b in BAD_INPUTS],
    ids=[b[0] for b in BAD_INPUTS],
)
@pytest.mark.faults
def test_bad_input_exits_2_naming_file_and_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[dict[str, Any]], None],
    field: str,
    problem: str,
) -> None:
    if field == "logs":  # tomli_w cannot write None: drop the key instead

        def mutate(raw: dict[str, Any]) -> None:
            del raw["logs"]["path"]

    path = write_config(tmp_path, mutate)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}" in err
    assert problem in err


@pytest.mark.faults
def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["config", "check", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err


@pytest.mark.faults
def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[network\nname = 'proxy'\n")
    assert main(["config", "check", str(bad)]) == 2
    assert f"{bad}: malformed TOML" in capsys.readouterr().err


@pytest.mark.faults
def test_secret_value_never_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate = _set(
        "deploy", "drone", {"url": "http://127.0.0.1:1/", "repo": "a/b", "token": "TOPSECRET42"}
    )
    path = write_config(tmp_path, mutate)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "TOPSECRET42" not in str(exc.value)
    main(["config", "check", str(path)])
    captured = capsys.readouterr()
    assert "TOPSECRET42" not in captured.out + captured.err


@pytest.mark.faults
def test_overrides_cannot_pass_the_hard_caps(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert load_config(path, {"allocator": {"batch": 3}}).allocator.batch == 3
    with pytest.raises(ConfigError, match=r"allocator.batch"):
        load_config(path, {"allocator": {"batch": 500}})


@pytest.mark.faults
@pytest.mark.parametrize(
    ("field", "value"),
    [("allocator_batch", 21), ("allocator_concurrency", 11), ("allocator_rounds", 6)],
)
def test_the_ui_form_cannot_raise_the_caps(field: str, value: int) -> None:
    from pydantic import ValidationError

    from flows.verify import RunParameters

    with pytest.raises(ValidationError, match=field):
        RunParameters(**{field: value})
    assert RunParameters(**{field: value - 1}).overrides()["allocator"]
