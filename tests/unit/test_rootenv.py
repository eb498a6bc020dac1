"""Prefect's ambient settings files cannot run code as root (pvcheck.rootenv).

Prefect reads prefect.toml, .env and pyproject.toml from the working folder and
profiles.toml and logging.yml from $PREFECT_HOME (default ~/.prefect) when it is imported; a
logging YAML's handler can be any callable. Each case plants one of them in a folder owned
by another user (uid 65534), runs the installed `pvcheck` as root from there (HOME there too,
as `sudo -E` keeps it), and asserts the payload never ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import LAB_CONFIG, ROOT

PVCHECK = str(Path(sys.executable).parent / "pvcheck")
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attack is on pvcheck run as root")
pytestmark = [pytest.mark.faults, as_root]


def _nobodys(path: Path) -> Path:
    os.chown(path, NOBODY, NOBODY)
    return path


def _payload(folder: Path, marker: Path) -> Path:
    """A logging YAML whose handler is `subprocess.call`: it records who ran it."""
    yml = folder / "pwn.yml"
    yml.write_text(
        "version: 1\n"
        "handlers:\n"
        "  pwn:\n"
        "    (): subprocess.call\n"
        f"    args: [sh, -c, 'id -u > {marker}']\n"
        "root:\n"
        "  handlers: [pwn]\n"
    )
    return _nobodys(yml)


def _plant(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _nobodys(path.parent)
    path.write_text(text)
    _nobodys(path)


# How a user makes Prefect load their logging YAML: the file to plant, its text.
SOURCES: dict[str, Callable[[Path], tuple[str, str]]] = {
    "prefect.toml": lambda y: ("prefect.toml", f'[logging]\nconfig_path = "{y}"\n'),
    ".env": lambda y: (".env", f"PREFECT_LOGGING_SETTINGS_PATH={y}\n"),
    "pyproject.toml": lambda y: (
        "pyproject.toml",
        f'[tool.prefect.logging]\nconfig_path = "{y}"\n',
    ),
    "HOME profiles.toml": lambda y: (
        ".prefect/profiles.toml",
        f'active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_SETTINGS_PATH = "{y}"\n',
    ),
    # Prefect's default logging config path is $PREFECT_HOME/logging.yml, ~/.prefect's.
    "HOME logging.yml": lambda y: (".prefect/logging.yml", y.read_text()),
}


@pytest.fixture
def theirs(tmp_path: Path) -> Path:
    """A folder another user owns: the caller's project, and their home."""
    folder = tmp_path / "proj"
    folder.mkdir(mode=0o755)
    return _nobodys(folder)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


def _pvcheck(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PVCHECK, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# Commands that import Prefect and need no Docker: what each ends with, untouched by the plant.
COMMANDS = {
    # imports Prefect's flows, which set up its logging from its settings
    "prefect-yaml": (("prefect-yaml", "--config", str(LAB_CONFIG)), 0, "deployments:"),
    # the worker entry (`prefect worker start` inherits this process's folder and environment);
    # with no API configured it stops before starting one
    "worker": (("worker", "--config", str(LAB_CONFIG)), 1, "set PREFECT_API_URL"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_settings_planted_in_the_callers_folder_or_home_never_run_as_root(
    theirs: Path, tmp_path: Path, source: str, command: str
) -> None:
    marker = tmp_path / "ran-as"
    name, text = SOURCES[source](_payload(theirs, marker))
    _plant(theirs, name, text)
    argv, rc, said = COMMANDS[command]
    done = _pvcheck(theirs, _env(theirs), *argv)
    assert not marker.exists(), f"the payload ran as uid {marker.read_text().strip()}"
    assert done.returncode == rc, done.stderr[-2000:]
    assert said in done.stdout + done.stderr


@pytest.mark.parametrize(
    "variable",
    [
        "PREFECT_HOME",
        "PREFECT_LOGGING_SETTINGS_PATH",
        "PREFECT_PROFILES_PATH",
        "prefect_logging_settings_path",  # Prefect matches names in any case
    ],
)
def test_a_prefect_variable_naming_a_file_others_can_change_is_refused(
    theirs: Path, tmp_path: Path, variable: str
) -> None:
    marker = tmp_path / "ran-as"
    yml = _payload(theirs, marker)
    _plant(theirs, ".prefect/logging.yml", yml.read_text())
    profile = f'active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_SETTINGS_PATH = "{yml}"\n'
    _plant(theirs, "profiles.toml", profile)
    value = {
        "PREFECT_HOME": theirs / ".prefect",
        "PREFECT_LOGGING_SETTINGS_PATH": yml,
        "PREFECT_PROFILES_PATH": theirs / "profiles.toml",
    }[variable.upper()]
    root_home = tmp_path / "root-home"
    root_home.mkdir(mode=0o700)
    env = _env(root_home, **{variable: str(value)})
    done = _pvcheck(tmp_path, env, "prefect-yaml", "--config", str(LAB_CONFIG))
    assert not marker.exists(), f"the payload ran as uid {marker.read_text().strip()}"
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert variable.upper() in done.stderr and f"owned by uid {NOBODY}" in done.stderr
    assert not done.stdout


def test_a_root_only_prefect_home_given_explicitly_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir(mode=0o700)
    marker = tmp_path / "logging-used"
    # Root's own logging config is honoured: proof that this PREFECT_HOME was used.
    (home / "logging.yml").write_text(
        "version: 1\nhandlers:\n  mine:\n    class: logging.FileHandler\n"
        f"    filename: {marker}\nroot:\n  handlers: [mine]\n"
    )
    env = _env(Path("/nonexistent"), PREFECT_HOME=str(home))
    done = _pvcheck(tmp_path, env, "prefect-yaml", "--config", str(LAB_CONFIG))
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists()


def test_relative_paths_are_the_callers_though_root_runs_elsewhere(tmp_path: Path) -> None:
    out = subprocess.run(
        [PVCHECK, "config", "check", os.path.relpath(LAB_CONFIG, ROOT)],
        cwd=ROOT,
        env=_env(Path("/root")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"{LAB_CONFIG}: valid"), out.stdout[:200]


def test_importing_the_cli_leaves_prefect_unimported() -> None:
    """The guard in main runs before Prefect reads any setting: nothing app.cli imports at
    module level may import Prefect."""
    probe = (
        "import sys, app.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout[:500] + done.stderr[-2000:]


def test_a_root_profile_naming_someone_elses_logging_config_is_refused(
    theirs: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran-as"
    yml = _payload(theirs, marker)
    home = tmp_path / "prefect-home"
    home.mkdir(mode=0o700)
    (home / "profiles.toml").write_text(
        f'active = "ops"\n[profiles.ops]\nPREFECT_LOGGING_SETTINGS_PATH = "{yml}"\n'
    )
    env = _env(Path("/root"), PREFECT_HOME=str(home))
    done = _pvcheck(tmp_path, env, "prefect-yaml", "--config", str(LAB_CONFIG))
    assert not marker.exists()
    assert done.returncode == 2 and "PREFECT_LOGGING_SETTINGS_PATH=" in done.stderr, done.stderr


def test_every_path_valued_prefect_setting_is_checked() -> None:
    """PATH_SETTINGS against the installed Prefect: a setting that names a file (a Path, or a
    *_file / *_directory / *_path string) must be in it, every alias of it too."""
    import typing

    from prefect.settings.models.root import Settings
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    from pvcheck.rootenv import PATH_SETTINGS, URL_SETTINGS

    def names(prefix: str, model: type[BaseSettings]) -> Iterator[tuple[str, bool]]:
        for field, info in model.model_fields.items():
            kinds = [info.annotation, *typing.get_args(info.annotation)]
            nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseSettings)]
            if nested:
                yield from names(f"{prefix}{field.upper()}_", nested[0])
                continue
            aliases = info.validation_alias
            spelt = [prefix + field.upper()]
            if isinstance(aliases, AliasChoices):
                spelt += [a.upper() for a in aliases.choices if isinstance(a, str)]
            is_path = (
                Path in kinds
                or field.endswith(("_file", "_directory"))
                or (field.endswith("_path") and field not in ("base_path", "search_path"))
            )
            for name in spelt:
                yield name, is_path or field == "connection_url"

    wanted = {name for name, is_path in names("PREFECT_", Settings) if is_path}
    assert wanted - (PATH_SETTINGS | URL_SETTINGS) == set()


def test_relative_path_arguments_are_joined_to_the_callers_folder() -> None:
    from pvcheck.app.cli import absolute_paths, build_parser

    args = build_parser().parse_args(
        ["run", "--config", "lab/x.toml", "--json", "-", "--junit", "out/../r.xml"]
    )
    absolute_paths(args, "/home/op/proj")
    assert (args.config, args.json, args.junit) == (
        "/home/op/proj/lab/x.toml",
        "-",
        "/home/op/proj/out/../r.xml",
    )
    args = build_parser().parse_args(["serve", "--config", "a.toml", "--config", "/etc/b.toml"])
    absolute_paths(args, "/srv")
    assert args.config == ["/srv/a.toml", "/etc/b.toml"]
    args = build_parser().parse_args(["config", "check", "--json", "c.toml"])
    absolute_paths(args, "/srv")
    assert (args.file, args.json) == ("/srv/c.toml", True)


def test_a_temporary_folder_others_can_change_is_not_used(theirs: Path, tmp_path: Path) -> None:
    from pvcheck.rootenv import _safe_temp

    assert _safe_temp("/tmp") and _safe_temp(str(tmp_path))
    assert not _safe_temp(str(theirs)) and not _safe_temp("relative") and not _safe_temp("/nope")
