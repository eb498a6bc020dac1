"""The host lock and the run registry are the engine's, however its URL is spelt."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvcheck import runs
from pvcheck.errors import HostBusy
from pvcheck.runs import HostLock, RunRegistry, engine_key
from tests.helpers import held_in_another_process

AS_ROOT = os.geteuid() == 0
VAR_RUN_IS_RUN = os.path.realpath("/var/run") == "/run"


@pytest.fixture(autouse=True)
def _fresh_ssh_resolution() -> Iterator[None]:
    runs._ssh_destination.cache_clear()
    yield
    runs._ssh_destination.cache_clear()


@pytest.fixture
def ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An `ssh` first on PATH that resolves as one with this ssh_config would:
    Host cc-ci / HostName cc-ci.example.org / User deploy; anything else as given."""
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = -G ] || exit 99\n'
        "port=$3; dest=$5; user=${dest%@*}; host=${dest#*@}\n"
        '[ "$user" = "$dest" ] && user=""\n'
        'if [ "$host" = cc-ci ]; then host=cc-ci.example.org; user=${user:-deploy}; fi\n'
        'echo "user ${user:-root}"; echo "hostname $host"; echo "port $port"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")


@pytest.mark.skipif(not VAR_RUN_IS_RUN, reason="needs /var/run linked to /run")
def test_one_unix_socket_under_two_spellings_is_one_engine() -> None:
    assert engine_key("unix:///var/run/docker.sock") == engine_key("unix:///run/docker.sock")
    assert engine_key("unix:///run/docker.sock") == "unix_run_docker.sock"


def test_a_unix_socket_is_keyed_by_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    assert engine_key(f"unix://{tmp_path}/alias/docker.sock") == engine_key(
        f"unix://{real}/docker.sock"
    )
    assert engine_key(f"unix://{real}//./docker.sock/") == engine_key(f"unix://{real}/docker.sock")
    assert engine_key(f"unix://{real}/docker.sock") != engine_key(f"unix://{real}/other.sock")


@pytest.mark.skipif(not (AS_ROOT and shutil.which("ssh")), reason="needs ssh, run as root")
def test_ssh_as_root_with_and_without_user_and_port_is_one_engine() -> None:
    # The pair, through the real `ssh -G` (no connection is made).
    assert engine_key("ssh://root@h") == engine_key("ssh://h:22") == engine_key("ssh://h")
    assert engine_key("ssh://root@H:22/") == engine_key("ssh://h")
    assert engine_key("ssh://root@h") != engine_key("ssh://root@h:2222")
    assert engine_key("ssh://root@h") != engine_key("ssh://bob@h")
    assert engine_key("ssh://root@h") != engine_key("ssh://root@g")


@pytest.mark.usefixtures("ssh_config")
def test_ssh_is_keyed_by_what_ssh_itself_resolves() -> None:
    assert engine_key("ssh://cc-ci") == "ssh_deploy@cc-ci.example.org_22"
    assert engine_key("ssh://cc-ci") == engine_key("ssh://deploy@cc-ci.example.org:22")
    # the URL's user wins over ssh_config's User, as it does for ssh
    assert engine_key("ssh://root@cc-ci") == engine_key("ssh://root@cc-ci.example.org")
    assert engine_key("ssh://cc-ci") != engine_key("ssh://root@cc-ci")


def test_without_ssh_the_defaults_are_ssh_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert engine_key("ssh://h") == engine_key(f"ssh://{me}@h:22") == f"ssh_{me}@h_22"


def test_tcp_with_and_without_its_default_port_is_one_engine() -> None:
    assert engine_key("tcp://h") == engine_key("tcp://H:2375/") == "tcp_h_2375"
    assert engine_key("tcp://h:2376") != engine_key("tcp://h")
    assert engine_key("tcp://h") != engine_key("tcp://g")


def test_a_key_never_leaves_its_folder() -> None:
    for url in ("tcp://../../etc:1", "unix:///../../etc/x", "ssh://../x", "tcp://h:99999/../x"):
        key = engine_key(url)
        assert "/" not in key and key not in (".", ".."), url


def test_different_kinds_of_engine_never_share_a_key() -> None:
    keys = {engine_key(u) for u in ("unix:///h", "tcp://h:22", "ssh://root@h:22")}
    assert len(keys) == 3


@pytest.mark.skipif(not VAR_RUN_IS_RUN, reason="needs /var/run linked to /run")
@pytest.mark.faults
def test_a_run_under_the_other_spelling_of_the_socket_is_busy(tmp_path: Path) -> None:
    held = held_in_another_process(
        "from pvcheck.runs import HostLock",
        "HostLock(Path(sys.argv[1]), 'unix:///var/run/docker.sock')",
        tmp_path,
    )
    with held, pytest.raises(HostBusy), HostLock(tmp_path, "unix:///run/docker.sock"):
        pass
    assert RunRegistry(tmp_path, "unix:///run/docker.sock").dir == (
        RunRegistry(tmp_path, "unix:///var/run/docker.sock").dir
    )


@pytest.mark.skipif(not (AS_ROOT and shutil.which("ssh")), reason="needs ssh, run as root")
@pytest.mark.faults
def test_a_run_under_the_other_spelling_of_the_ssh_host_is_busy(tmp_path: Path) -> None:
    held = held_in_another_process(
        "from pvcheck.runs import HostLock", "HostLock(Path(sys.argv[1]), 'ssh://root@h')", tmp_path
    )
    with held, pytest.raises(HostBusy), HostLock(tmp_path, "ssh://h:22"):
        pass


def test_an_ssh_config_file_names_the_engine_as_ssh_resolves_it_with_that_file(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "ssh_config"
    conf.write_text("Host cc-ci\n  HostName 169.254.78.2\n  User root\n")
    assert engine_key("ssh://cc-ci", conf) == "ssh_root@169.254.78.2_22"  # the real ssh -G
    assert engine_key("ssh://cc-ci", conf) == engine_key("ssh://root@169.254.78.2")
