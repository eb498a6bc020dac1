"""Config loading: both shipped configs load; every kind of bad input is exit 2 naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvcheck.app.cli import main
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
    # REVIEW-pvcheck.md counted 9 after the proxy rebuild, warm-keycloak's app and db among them
    assert len(cfg.services.control_plane) == 9
    assert "warm-keycloak_ci_commoninternet_net_db" in cfg.services.control_plane
    statuses = {r.name: r.expect_status for r in cfg.routes}
    assert statuses["drone-ui"] == [303] and statuses["dashboard"] == [200]
    assert all(r.verify_tls for r in cfg.routes)  # the public certificate, verified
    assert {r.connect_to for r in cfg.routes if r.check_from == "host"} == {"127.0.0.1:443"}


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
    (
        "userinfo in a route URL",
        _set("routes.0", "url", "https://admin:hunter2@drone.lab.test/"),
        "routes[0].url",
        "must not carry user:password@",
    ),
    (
        "userinfo in the Drone URL",
        _set("deploy", "drone", {"url": "http://ci:pw@127.0.0.1:1/", "repo": "a/b"}),
        "deploy.drone.url",
        "must not carry user:password@",
    ),
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
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from pvcheck.flows.verify import RunParameters, verify

    with pytest.raises(ParameterTypeError, match=field):
        verify.validate_parameters({field: value})
    assert verify.validate_parameters({field: value - 1})[field] == value - 1
    # The form shows the same bound the validator enforces.
    assert parameter_schema(verify).model_dump()["properties"][field]["maximum"] == value - 1
    assert RunParameters.from_flow({field: value - 1}).overrides()["allocator"]


# --- configs built on a base (the cc-ci twin overlays the shipped cc-ci config) ----------
TWIN_CONFIG = LAB_CONFIG.parent / "cc-ci-twin.toml"


def _toml_keys(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in doc.items():
        if isinstance(value, dict):
            out |= _toml_keys(value, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def test_the_twin_overlay_changes_only_where_things_are() -> None:
    import tomllib

    overlay = tomllib.loads(TWIN_CONFIG.read_text())
    # Two machines, as cc-ci: the engine is the shipped `ssh://cc-ci` (the lab's ssh config
    # names it), the routes are the shipped ones untouched, results and run locks are read
    # at the shipped paths on the host.
    locations = {
        ("base",),
        ("target", "name"),
        ("target", "ssh", "config_file"),
        ("http", "connect_to"),
        ("http", "ca_bundle"),
        ("logs", "source"),
        ("logs", "path"),
        ("deploy", "drone", "url"),
        ("deploy", "drone", "token_env"),
        ("guard", "file"),
        ("docs", "dir"),
    }
    changed = {k for k in _toml_keys(overlay) if k[0] != "lab"}
    assert changed == locations
    shipped, twin = load_config(CCCI_CONFIG), load_config(TWIN_CONFIG)
    # What the run checks is the shipped config's, value for value.
    assert twin.services == shipped.services and twin.network == shipped.network
    assert twin.target.docker_host == shipped.target.docker_host == "ssh://cc-ci"
    # The routes are the shipped ones, name for name, checked from the same side; those from
    # outside connect to the twin host's address (what cc-ci's name resolves to).
    assert [(r.name, r.url, r.expect_status, r.core, r.check_from) for r in twin.routes] == [
        (r.name, r.url, r.expect_status, r.core, r.check_from) for r in shipped.routes
    ]
    assert twin.deploy is not None and shipped.deploy is not None
    assert twin.deploy.active_runs == shipped.deploy.active_runs
    assert twin.deploy.drone is not None and shipped.deploy.drone is not None
    assert twin.deploy.drone.results_path == shipped.deploy.drone.results_path
    assert twin.allocator == shipped.allocator
    assert twin.deploy is not None and shipped.deploy is not None
    assert twin.deploy.stack_pattern == shipped.deploy.stack_pattern
    assert (twin.deploy.recipe, twin.deploy.tiers) == (shipped.deploy.recipe, shipped.deploy.tiers)
    assert twin.deploy.active_runs.wait_s == shipped.deploy.active_runs.wait_s
    # Every route reaches the twin's Traefik and trusts the lab CA, not `verify_tls = false`.
    assert {(r.check_from, r.connect_to) for r in twin.routes} == {
        ("here", "169.254.78.2:443"),
        ("host", "127.0.0.1:443"),
    }
    assert all(r.verify_tls for r in twin.routes)
    assert {str(r.ca_bundle) for r in twin.routes} == {"/var/lib/pvcheck-lab/cc-ci-twin/ca.pem"}


def _layers(tmp_path: Path, base: str, overlay: str) -> Path:
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "base" / "base.toml").write_text(base)
    (tmp_path / "site").mkdir(exist_ok=True)
    path = tmp_path / "site" / "over.toml"
    path.write_text(overlay)
    return path


BASE = """
[network]
subnet = "10.10.0.0/16"
[services]
control_plane = ["a_app"]
[[routes]]
name = "r"
url = "http://a.test/"
[http]
timeout_s = 7
attempts = 2
[logs]
source = "file"
path = "logs/docker.log"
[docs]
dir = "docs"
"""


def test_tables_merge_values_and_arrays_replace_paths_stay_with_their_file(
    tmp_path: Path,
) -> None:
    path = _layers(
        tmp_path,
        BASE,
        'base = "../base/base.toml"\n[http]\nattempts = 5\n[services]\ncontrol_plane = ["b_app"]\n'
        '[docs]\ndir = "mydocs"\n',
    )
    cfg = load_config(path)
    assert (cfg.http.timeout_s, cfg.http.attempts) == (7, 5)  # merged key by key
    assert cfg.services.control_plane == ["b_app"]  # an array replaces
    assert cfg.logs.path == tmp_path / "base" / "logs" / "docker.log"  # the base's folder
    assert cfg.docs.dir == tmp_path / "site" / "mydocs"  # the overlay's folder
    assert cfg.source == path


def test_a_bad_value_names_the_file_that_wrote_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_base = BASE.replace("timeout_s = 7", "timeout_s = -1")
    path = _layers(tmp_path, bad_base, 'base = "../base/base.toml"\n[http]\nattempts = 5\n')
    assert main(["config", "check", str(path)]) == 2
    assert f"{tmp_path / 'base' / 'base.toml'}: http.timeout_s:" in capsys.readouterr().err
    path = _layers(tmp_path, BASE, 'base = "../base/base.toml"\n[http]\nattempts = 0\n')
    assert main(["config", "check", str(path)]) == 2
    assert f"{path}: http.attempts:" in capsys.readouterr().err
    # A route array replaced by the overlay: its errors are the overlay's.
    path = _layers(
        tmp_path, BASE, 'base = "../base/base.toml"\n[[routes]]\nname = "x"\nurl = "ftp://a"\n'
    )
    assert main(["config", "check", str(path)]) == 2
    assert f"{path}: routes[0].url:" in capsys.readouterr().err


@pytest.mark.faults
@pytest.mark.parametrize(
    ("overlay", "problem"),
    [
        ('base = "../base/missing.toml"\n', "missing.toml: file not found"),
        ('base = "over.toml"\n', "base: "),
        ("base = 5\n", "base: must be the path of another config file"),
        ('base = "../base/base.toml"\n[deploy.drone]\ntoken = "s3cret"\n', "a secret is written"),
    ],
    ids=["missing", "cycle", "not-a-path", "secret-in-overlay"],
)
def test_bad_bases_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overlay: str, problem: str
) -> None:
    path = _layers(tmp_path, BASE, overlay)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "s3cret" not in err


def test_config_check_json_prints_the_effective_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    assert main(["config", "check", "--json", str(TWIN_CONFIG)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"]["name"] == "cc-ci-twin"
    assert doc["services"]["control_plane"][0] == "traefik_ci_commoninternet_net_app"
    assert doc["routes"][0]["connect_to"] == "169.254.78.2:443"
    assert doc["deploy"]["drone"]["repo"] == "recipe-maintainers/cc-ci"  # from the base


def test_the_shipped_cc_ci_configs_read_each_path_on_the_machine_it_is_on() -> None:
    """cc-ci runs its phases on the orchestrator, which drives the host as `ssh cc-ci`: the
    phase files and the skill are read here, the engine's log, run locks and the host's sweep
    timer there; every route is checked from outside and through the host's own Traefik. The
    on-host overlay keeps every path on the host."""
    from pvcheck.placement import HERE, HOST, describe, placement

    shipped = load_config(CCCI_CONFIG)
    assert shipped.target.docker_host == "ssh://cc-ci"
    where = {p.setting: p.machine for p in placement(shipped)}
    assert where["docs.dir"] == where["guard.file"] == where["target.state_dir"] == HERE
    assert where["logs (journald)"] == where["active_runs.lock_folder"] == HOST
    assert where["active_runs.sweep_units"] == HOST
    assert where["active_runs.sweep_units_here"] == HERE
    assert where["deploy.adopt.results_path"] == where["deploy.drone.results_path"] == HOST
    outside = [r for r in shipped.routes if r.check_from == "here"]
    inside = [r for r in shipped.routes if r.check_from == "host"]
    assert [r.name + "-via-host" for r in outside] == [r.name for r in inside]
    assert all(r.connect_to is None for r in outside)  # real name resolution from here
    assert {r.connect_to for r in inside} == {"127.0.0.1:443"}
    assert shipped.docs.dir.parts[:3] == ("/", "srv", "cc-ci")  # the orchestrator's clone
    lines = describe(shipped)
    assert any("docs.dir" in line and "on this machine:" in line for line in lines)
    assert any("lock_folder" in line and "on ssh://cc-ci:" in line for line in lines)

    on_host = load_config(CCCI_CONFIG.with_name("cc-ci-on-host.toml"))
    assert on_host.target.docker_host == "unix:///var/run/docker.sock"
    assert on_host.deploy is not None and on_host.deploy.active_runs.sweep_units_here == []
    assert all("this machine (the target host)" in line for line in describe(on_host))
    assert not str(on_host.docs.dir).startswith("/srv/")  # no orchestrator path on the host
    assert on_host.guard is not None and not str(on_host.guard.file).startswith("/srv/")
