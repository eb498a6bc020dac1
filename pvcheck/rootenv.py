"""As root, Prefect reads only settings that root alone can change.

Prefect reads its settings when it is imported: PREFECT_* variables (in any letter case);
`.env`, `prefect.toml` and `pyproject.toml` ([tool.prefect]) in the working folder; and the
active profile of PREFECT_PROFILES_PATH (default $PREFECT_HOME/profiles.toml, PREFECT_HOME
default ~/.prefect). Its logging config (PREFECT_LOGGING_SETTINGS_PATH, default
$PREFECT_HOME/logging.yml) may name any callable as a handler, so whoever can write one of
these runs code as root; `sudo -E` keeps the caller's HOME, and root may well run pvcheck
from a user's folder. So before anything imports Prefect, pvcheck running as root:

- works from `/` (the caller's relative paths made absolute first), never the caller's folder;
- sets HOME to root's own home, and drops XDG_*_HOME, which would point into the caller's;
- sets PREFECT_HOME to root's ~/.prefect, unless PREFECT_HOME is given and root's alone (an
  explicit choice is kept, not silently replaced);
- drops TMPDIR/TEMP/TMP when others can change them (a worker's flow run starts in a temporary
  folder, where Prefect reads prefect.toml again);
- refuses (StateFileError, exit 2) a path-valued PREFECT_* setting, in the environment or in
  root's active profile, that names what others can change, and others' files in the
  folders Prefect reads: refusing says why, where dropping would silently change the run.

Flow runs that a served process or a worker starts inherit this folder and environment.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pvcheck.errors import PvcheckError, StateFileError
from pvcheck.safeio import read_capped, writable_by_others

WORKDIR = Path("/")
# What Prefect reads from the working folder it starts in.
SETTINGS_FILES = (".env", "prefect.toml", "pyproject.toml")
# Prefect settings that name a file or folder (aliases included; a unit test compares this
# with the installed Prefect's settings model).
PATH_SETTINGS = frozenset(
    {
        "PREFECT_HOME",
        "PREFECT_PROFILES_PATH",
        "PREFECT_LOGGING_CONFIG_PATH",
        "PREFECT_LOGGING_SETTINGS_PATH",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
        "PREFECT_LOCAL_STORAGE_PATH",
        "PREFECT_SERVER_MEMO_STORE_PATH",
        "PREFECT_MEMO_STORE_PATH",
        "PREFECT_SERVER_UI_STATIC_DIRECTORY",
        "PREFECT_UI_STATIC_DIRECTORY",
        "PREFECT_API_SSL_CERT_FILE",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_CA_FILE",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_CERT_FILE",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_KEY_FILE",
    }
)
# Database URLs: a SQLite one names the database file.
URL_SETTINGS = frozenset(
    {"PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"}
)
XDG_HOMES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")
TEMP_VARS = ("TMPDIR", "TEMP", "TMP")
MAX_PROFILES_BYTES = 1 << 20
_SQLITE = re.compile(r"^sqlite(\+\w+)?:///(?P<path>[^?]*)")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def require_roots(path: Path, what: str) -> None:
    """Refuse `path` when someone other than root could change it, or create it first (then
    the folder it would be made in decides), or re-point a link on the way to it."""
    for probe in dict.fromkeys((path, Path(os.path.realpath(path)))):
        existing = _nearest_existing(probe)
        why = writable_by_others(existing)
        if why:
            where = "" if existing == probe else f" (where it would be made: {existing})"
            raise StateFileError(
                str(path),
                f"{what} is {why}{where}: as root, pvcheck lets Prefect read only settings "
                "that root alone can change (unset it, or chown root and chmod go-w it)",
            )


def _require_settings_folder(folder: Path, what: str) -> None:
    """Refuse `folder` as a working folder for Prefect unless it, and the settings files
    Prefect reads there, are root's alone."""
    require_roots(folder, what)
    for name in SETTINGS_FILES:
        require_roots(folder / name, f"{name} in {what}")


def _paths(name: str, value: str, prefect_home: Path) -> list[Path]:
    """The files a setting names, as Prefect, working in WORKDIR, would open them."""
    value = value.replace("$PREFECT_HOME", str(prefect_home))
    if name in URL_SETTINGS:
        match = _SQLITE.match(value)
        value = match["path"] if match else ""
        if value == ":memory:":
            value = ""
    if not value:
        return []
    return list(dict.fromkeys((WORKDIR / value, WORKDIR / os.path.expanduser(value))))


def _active_profile(path: Path) -> Mapping[str, object]:
    """The settings of the profile Prefect would make active from `path` (root's by now)."""
    try:
        data = tomllib.loads((read_capped(path, MAX_PROFILES_BYTES, follow=True) or b"").decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # Prefect warns and ignores an unreadable profiles file
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = (data.get("profiles") or {}).get(active) if isinstance(active, str) else None
    return {str(k).upper(): v for k, v in profile.items()} if isinstance(profile, dict) else {}


def _check_settings(settings: Iterable[tuple[str, object]], prefect_home: Path) -> None:
    for name, value in settings:
        if name in PATH_SETTINGS | URL_SETTINGS and isinstance(value, str):
            for path in _paths(name, value, prefect_home):
                require_roots(path, f"{name}={value}")


def _safe_temp(value: str) -> bool:
    """A temporary folder only root can change, or one like /tmp (root's, sticky)."""
    try:
        info = os.stat(value)
    except OSError:
        return False
    open_to_others = info.st_mode & 0o022 and not info.st_mode & 0o1000
    return (
        os.path.isabs(value)
        and info.st_uid == 0
        and not open_to_others
        and writable_by_others(Path(value).parent) is None
    )


def secure() -> None:
    """Make this process safe to import Prefect in as root (nothing when not root). Call it
    before anything imports Prefect, once the caller's relative paths are absolute."""
    if os.geteuid() != 0:
        return
    if any(m == "prefect" or m.startswith("prefect.") for m in sys.modules):
        raise PvcheckError("internal: Prefect was imported before its settings were secured")
    _require_settings_folder(WORKDIR, "the folder pvcheck runs Prefect from")
    os.chdir(WORKDIR)

    home = Path(pwd.getpwuid(0).pw_dir or "/")
    require_roots(home, "root's home folder")
    os.environ["HOME"] = str(home)
    for name in XDG_HOMES:
        os.environ.pop(name, None)
    for name in TEMP_VARS:
        if name in os.environ and not _safe_temp(os.environ[name]):
            del os.environ[name]
    tempfile.tempdir = None  # chosen again from what is left

    # Prefect matches PREFECT_* names in any case: one spelling, so the checks see it.
    for key in [k for k in os.environ if k.upper().startswith("PREFECT_") and not k.isupper()]:
        os.environ.setdefault(key.upper(), os.environ.pop(key))

    given = os.environ.get("PREFECT_HOME")
    prefect_home = WORKDIR / os.path.expanduser(given) if given else home / ".prefect"
    require_roots(prefect_home, "PREFECT_HOME" if given else "root's Prefect home")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    if prefect_home.is_dir():
        # logging.yml, profiles.toml, storage (pickled results), the database, ...
        for entry in sorted(prefect_home.iterdir()):
            require_roots(entry, f"{entry.name} in PREFECT_HOME")

    profiles = WORKDIR / (os.environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml")
    require_roots(profiles, "PREFECT_PROFILES_PATH (the Prefect profiles file)")
    profile = _active_profile(profiles)
    _check_settings(profile.items(), prefect_home)
    _check_settings(
        ((k, v) for k, v in os.environ.items() if k.startswith("PREFECT_")), prefect_home
    )
