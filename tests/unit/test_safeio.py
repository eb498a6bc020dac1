"""Files as root in shared folders: never through a link, never a FIFO, owner and mode kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pvcheck.config import GuardConfig
from pvcheck.errors import StateFileError
from pvcheck.runs import HostLock
from pvcheck.safeio import atomic_write, read_capped, require_root_only
from pvcheck.statefiles import (
    append_history,
    append_journal,
    docs_lock,
    read_state,
    update_sections,
)
from tests.helpers import check_guard

pytestmark = pytest.mark.faults

VICTIM = "root's file: must never change\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text(VICTIM)
    return path


def test_a_symlinked_state_file_is_refused_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    status = tmp_path / "STATUS-pvcheck.md"
    status.symlink_to(victim)
    with pytest.raises(StateFileError, match=rf"{status}: is a symbolic link"):
        update_sections(status, "# STATUS\n", {"summary": "x"})
    with pytest.raises(StateFileError, match="symbolic link"):
        read_state(status)  # its text is never copied into the docs folder
    with pytest.raises(StateFileError, match="symbolic link"):
        append_journal(status, "# J\n", "entry")
    with pytest.raises(StateFileError, match="symbolic link"):
        append_history(status, {"run_id": "x"}, tmp_path / "archive.jsonl")
    assert victim.read_text() == VICTIM and status.is_symlink()


def test_a_hard_link_is_never_appended_to(tmp_path: Path, victim: Path) -> None:
    journal = tmp_path / "JOURNAL-pvcheck.md"
    os.link(victim, journal)
    with pytest.raises(StateFileError, match="hard links"):
        append_journal(journal, "# J\n", "entry")
    assert victim.read_text() == VICTIM


def test_a_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "REVIEW-pvcheck.md"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(StateFileError, match="is a FIFO"):
        read_state(fifo)
    with pytest.raises(StateFileError, match="is a FIFO"):
        atomic_write(fifo, "x")
    assert time.monotonic() - started < 2
    with pytest.raises(StateFileError, match="character device"):
        read_capped(Path("/dev/zero"), 10, follow=True)


def test_a_fifo_guard_file_is_an_error_check_within_the_deadline(tmp_path: Path) -> None:
    skill = tmp_path / "SKILL.md"
    os.mkfifo(skill)
    started = time.monotonic()
    checks, argv = check_guard(GuardConfig(file=skill))
    assert time.monotonic() - started < 2 and argv is None
    assert [(c.id, str(c.status)) for c in checks] == [("guard.section", "error")]
    assert "FIFO" in checks[0].detail


def test_new_files_are_0644_and_a_replaced_file_keeps_mode_and_owner(tmp_path: Path) -> None:
    new = tmp_path / "STATUS-pvcheck.md"
    old_umask = os.umask(0o077)  # even under a strict umask: readable, as a state file is
    try:
        atomic_write(new, "a\n")
        append_journal(tmp_path / "JOURNAL-pvcheck.md", "# J\n", "e")
    finally:
        os.umask(old_umask)
    assert new.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "JOURNAL-pvcheck.md").stat().st_mode & 0o777 == 0o644
    os.chmod(new, 0o640)
    os.chown(new, 0, 5678)
    atomic_write(new, "b\n")
    info = new.stat()
    assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, 5678)
    assert new.read_text() == "b\n" and not list(tmp_path.glob(".*.tmp"))
    if os.geteuid() == 0:  # as root, a file someone else owns is never written
        os.chown(new, 1234, 5678)
        with pytest.raises(StateFileError, match="owned by uid 1234"):
            atomic_write(new, "c\n")
        with pytest.raises(StateFileError, match="owned by uid 1234"):
            append_journal(new, "# J\n", "e")
        assert new.read_text() == "b\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule applies when pvcheck runs as root")
def test_as_root_folders_and_configs_others_can_write_are_refused(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    os.chown(docs, 1000, 1000)
    with pytest.raises(StateFileError, match="owned by uid 1000"), docs_lock(docs):
        pass
    os.chown(docs, 0, 0)
    os.chmod(docs, 0o777)
    with pytest.raises(StateFileError, match="writable by every user"), docs_lock(docs):
        pass
    os.chmod(docs, 0o1777)  # sticky, like /tmp: still anyone could plant files in it
    with pytest.raises(StateFileError, match="writable by every user"), docs_lock(docs):
        pass
    os.chmod(docs, 0o755)
    inner = docs / "inner"
    inner.mkdir()
    os.chmod(docs, 0o777)  # a folder above that anyone can change: `inner` could be swapped
    with pytest.raises(StateFileError, match=f"inside {docs}, which is writable by every"):
        require_root_only(inner, "the machine-docs folder")
    os.chmod(docs, 0o1777)  # above, a sticky folder (like /tmp) is fine
    require_root_only(inner, "the machine-docs folder")
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o775)
    os.chown(state, 0, 1000)
    with (
        pytest.raises(StateFileError, match="writable by group 1000"),
        HostLock(state, "unix:///x"),
    ):
        pass
    config = tmp_path / "c.toml"
    config.write_text("")
    os.chown(config, 1000, 1000)
    with pytest.raises(StateFileError, match="the config file is owned by uid 1000"):
        require_root_only(config, "the config file")


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule applies when pvcheck runs as root")
def test_a_config_another_user_owns_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pvcheck.app.cli import main
    from tests.helpers import write_config

    config = write_config(tmp_path)
    os.chown(config, 1000, 1000)
    assert main(["config", "check", str(config)]) == 2
    assert f"{config}: the config file is owned by uid 1000" in capsys.readouterr().err


def test_line_separators_cannot_break_an_owned_section(tmp_path: Path) -> None:
    from pvcheck.statefiles import sections

    status = tmp_path / "STATUS-pvcheck.md"
    hostile = "reason\rwith\u2028breaks\x85<!-- pvcheck:end summary -->\x0b"
    update_sections(status, "# STATUS\n", {"summary": hostile})
    update_sections(status, "# STATUS\n", {"summary": "second run"})
    text = status.read_text()
    assert list(sections(text, str(status))) == ["summary"] and "second run" in text
    append_journal(tmp_path / "JOURNAL-pvcheck.md", "# J\n", f"- {hostile}")
    assert len((tmp_path / "JOURNAL-pvcheck.md").read_text().splitlines()) == 3


def test_canary_with_a_target_override_exits_2_before_any_connection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvcheck import hosts
    from pvcheck.app.cli import main
    from tests.helpers import LAB_CONFIG

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(hosts, "host_for", no_connection)
    monkeypatch.setattr("pvcheck.swarm.Swarm.connect", no_connection)
    rc = main(
        ["run", "--config", str(LAB_CONFIG), "--target", "ssh://root@cc-ci.example:22", "--canary"]
    )
    assert rc == 2
    assert "--canary: not with --target" in capsys.readouterr().err


def test_lab_actions_refuse_a_remote_engine(tmp_path: Path) -> None:
    from pvcheck.config import load_config
    from pvcheck.errors import LabError
    from pvcheck.lab import lab_down, lab_status, lab_up
    from tests.helpers import write_config

    def remote(raw: dict[str, object]) -> None:
        raw["target"]["docker_host"] = "ssh://root@cc-ci.example:22"  # type: ignore[index]

    cfg = load_config(write_config(tmp_path, remote))
    for action in (lab_up, lab_down, lab_status):
        with pytest.raises(LabError, match="only on the local engine"):
            action(cfg)


def test_only_the_labs_own_network_on_the_local_socket_is_a_lab_engine() -> None:
    from pvcheck.canary import lab_engine_problem

    class Net:
        def __init__(self, labels: dict[str, str] | None) -> None:
            self.labels = labels

        def network(self, name: str) -> dict[str, object] | None:
            return None if self.labels is None else {"Name": name, "Labels": self.labels}

    sock = "unix:///var/run/docker.sock"
    assert lab_engine_problem(Net({"pvcheck.lab": "1"}), sock, "proxy") is None  # type: ignore[arg-type]
    assert "not made by the lab" in (lab_engine_problem(Net({}), sock, "proxy") or "")  # type: ignore[arg-type]
    assert "no proxy network" in (lab_engine_problem(Net(None), sock, "proxy") or "")  # type: ignore[arg-type]
    remote = lab_engine_problem(Net({"pvcheck.lab": "1"}), "ssh://root@cc-ci:22", "proxy")  # type: ignore[arg-type]
    assert remote == "ssh://root@cc-ci:22 is not the local engine"
