"""As root, pvcheck trusts only what root alone can change: the folder a path really is and
every folder above it, every file git includes, the harness's results file, the code a
worker's flow runs import, and the Drone stand-in it reuses (security findings 5, 6, 11)."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pvcheck.errors import LabError, StateFileError
from pvcheck.safeio import require_root_only, writable_by_others

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(os.geteuid() != 0, reason="the rules apply when pvcheck runs as root"),
]

NOBODY = 65534
T = TypeVar("T")


def users(path: Path, mode: int = 0o755) -> Path:
    """Give path to another user (nobody)."""
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    if not path.is_symlink():
        os.chmod(path, mode)
    return path


def gone(pid: int) -> bool:
    """Process pid has ended (a zombie not yet reaped counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def within(seconds: float, call: Callable[[], T]) -> T:
    """call() in a thread: a hang fails the test instead of blocking it."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", call()))
        except BaseException as exc:
            box.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"no answer within {seconds:g}s: it hung"
    kind, value = box[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


# --- 5. the folder a path really is, and every folder above it ------------------------------


def test_a_root_owned_link_into_a_users_folder_is_refused(tmp_path: Path) -> None:
    from pvcheck.statefiles import docs_lock

    home = tmp_path / "home"
    home.mkdir()
    users(home)  # the user's own folder ...
    docs = home / "docs"
    docs.mkdir()  # ... holding a folder root owns: the user can swap it for anything
    link = tmp_path / "machine-docs"
    link.symlink_to(docs)  # made by root, in root's folder: the path as written looks fine
    with pytest.raises(StateFileError, match=f"inside {home}, which is owned by uid {NOBODY}"):
        require_root_only(link, "the machine-docs folder")
    with pytest.raises(StateFileError, match=f"owned by uid {NOBODY}"), docs_lock(link):
        pass
    assert not list(docs.iterdir())  # no lock, no STATUS written there
    elsewhere = tmp_path / "to-the-folder"
    elsewhere.symlink_to(home)  # straight at the user's folder
    assert writable_by_others(elsewhere) == f"owned by uid {NOBODY} (its real path is {home})"
    # A relative link through `..` and a second link: followed as the kernel follows it.
    (tmp_path / "hop").symlink_to("machine-docs/../home")
    assert writable_by_others(tmp_path / "hop" / "docs") == (
        f"inside {home}, which is owned by uid {NOBODY}"
    )


def test_a_link_on_the_way_must_be_roots_and_missing_paths_are_checked_as_far_as_they_go(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    theirs = tmp_path / "theirs"
    theirs.symlink_to(real)
    users(theirs)  # its owner could replace it (the sticky rule, protected_symlinks)
    assert writable_by_others(theirs / "x") == (
        f"reached through {theirs}, a link owned by uid {NOBODY}"
    )
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    users(open_folder, 0o777)
    # Not there yet, but whoever can write the folder could make it before pvcheck does.
    assert writable_by_others(open_folder / "not-yet" / "STATUS.md") == (
        f"inside {open_folder}, which is owned by uid {NOBODY}"
    )
    assert writable_by_others(real / "not-yet" / "STATUS.md") is None


def test_sticky_folders_above_and_root_links_in_them_stay_fine(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp: others cannot rename or remove root's entries
    docs = sticky / "docs"
    docs.mkdir()
    link = sticky / "link"
    link.symlink_to(docs)
    assert writable_by_others(docs) is None
    assert writable_by_others(link) is None
    require_root_only(link / "STATUS-pvcheck.md", "the status file")
    assert writable_by_others(sticky) == "writable by every user"  # the path itself: never
    users(docs)
    assert writable_by_others(link) == f"owned by uid {NOBODY} (its real path is {docs})"


# --- 6. git includes --------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    argv = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.test"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o755)
    top = tmp_path / "repo"
    top.mkdir(mode=0o755)
    git(top, "init", "-q")
    (top / "README.md").write_text("x\n")
    git(top, "add", "README.md")
    git(top, "commit", "-q", "-m", "initial")
    yield top


def include(top: Path, section: str, target: str) -> None:
    with (top / ".git" / "config").open("a") as fh:
        fh.write(f"[{section}]\n\tpath = {target}\n")


def check(top: Path) -> str | None:
    from pvcheck.gitdocs import Repo, _env, unsafe_repo

    repo = Repo(top, top / ".git", top / ".git")
    return within(20, lambda: unsafe_repo(repo, _env("T <t@example.test>")))


def test_an_include_of_a_users_fifo_is_refused_without_opening_it(repo: Path) -> None:
    """The attack: the FIFO answers empty to the checks, then sets commit.gpgSign and
    gpg.program for the commit, which runs the user's program as root."""
    from pvcheck.config import load_config
    from pvcheck.gitdocs import commit_docs
    from tests.helpers import write_config

    def docs_in_repo(raw: dict[str, Any]) -> None:
        raw["docs"].update(dir=str(repo / "machine-docs"), commit=True)

    cfg = load_config(write_config(repo.parent, docs_in_repo))
    (repo / "machine-docs").mkdir()
    head = git(repo, "rev-parse", "HEAD")  # from here on, every git command there blocks
    theirs = repo.parent / "x"
    theirs.mkdir()
    users(theirs)
    fifo = theirs / "fifo"
    os.mkfifo(fifo)
    users(fifo, 0o666)
    clean = (repo / ".git" / "config").read_text()
    include(repo, "include", str(fifo))
    why = check(repo)
    assert why is not None
    assert why.startswith(f"{repo}/.git/config: include.path = {fifo}: {fifo} is inside {theirs}")
    # The whole commit is refused the same way, and never waits on the FIFO (nor runs
    # `git rev-parse`, which follows the include).
    committed = within(20, lambda: commit_docs(cfg.docs, "claim"))
    assert committed is not None and not committed.ok
    assert committed.detail.startswith(f"{repo}/.git/config: include.path = {fifo}: ")
    (repo / ".git" / "config").write_text(clean)
    assert git(repo, "rev-parse", "HEAD") == head


def test_every_include_target_is_checked(repo: Path) -> None:
    theirs = repo.parent / "theirs"
    theirs.mkdir()
    users(theirs)
    include(repo, 'includeIf "onbranch:never"', "../../theirs/later.cfg")  # missing, for now
    why = check(repo)
    assert why is not None and f"inside {theirs}, which is owned by uid {NOBODY}" in why
    assert why.startswith(f"{repo}/.git/config: includeif.onbranch:never.path = ../../theirs/")


def test_a_nested_include_is_followed_and_a_roots_own_include_is_fine(repo: Path) -> None:
    mine = repo.parent / "mine.cfg"
    mine.write_text("[user]\n\tname = Root\n")
    include(repo, "include", str(mine))
    assert check(repo) is None
    fifo = repo.parent / "fifo"
    os.mkfifo(fifo)  # even root's own: git would block reading it
    with mine.open("a") as fh:
        fh.write("[include]\n\tpath = fifo\n")  # relative to mine.cfg's folder
    assert check(repo) == (
        f"{mine}: include.path = fifo: {fifo} is not a regular file: git would read it as root"
    )
    mine.write_text("[include]\n\tpath = ~alice/x.cfg\n")
    why = check(repo)
    assert why is not None and why.endswith("pvcheck does not follow this form of include; refused")


# --- 11. results.json, PVCHECK_HOME's contents, the Drone stand-in ----------------------------


def test_a_results_file_someone_else_could_write_is_refused(tmp_path: Path) -> None:
    from pvcheck.harnessresults import ResultsError, read_results

    results = tmp_path / "results.json"
    results.write_text('{"stages": [{"name": "install", "status": "pass"}]}')
    assert read_results(results)["stages"][0]["status"] == "pass"
    os.chmod(results, 0o666)
    with pytest.raises(ResultsError, match=f"{results}: is writable by every user"):
        read_results(results)
    users(results, 0o644)  # planted by another user where the harness writes
    with pytest.raises(ResultsError, match=f"{results}: is owned by uid {NOBODY}"):
        read_results(results)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A PVCHECK_HOME: the flows and the package they import, all root's."""
    home = tmp_path / "home"
    for name in ("flows/verify.py", "pvcheck/__init__.py", "pvcheck/__pycache__/x.pyc"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("")
    return home


def start_worker_in(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run start_worker against `home`; the argv it would become (nothing is started)."""
    import pvcheck.flows.serving as serving

    became: list[str] = []
    monkeypatch.setenv("PVCHECK_HOME", str(home))
    monkeypatch.setattr(serving, "require_guarded_api", lambda: "http://api")
    monkeypatch.setattr(os, "execv", lambda path, argv: became.extend(argv))
    serving.start_worker("pvcheck")
    return became


@pytest.mark.parametrize(
    "plant",
    ["a module", "a cached module", "a package folder", "a link outside", "a link into .venv"],
)
def test_a_worker_refuses_a_home_holding_code_others_could_change(
    home: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    """The attack: a user edits a module (or its .pyc) under root's PVCHECK_HOME, and the
    next flow run imports it as root."""
    if plant == "a module":
        bad = users(home / "pvcheck" / "__init__.py", 0o644)
        why = f"is owned by uid {NOBODY}"
    elif plant == "a cached module":
        bad = home / "pvcheck" / "__pycache__" / "x.pyc"
        os.chmod(bad, 0o666)
        why = "is writable by every user"
    elif plant == "a package folder":
        bad = users(home / "pvcheck" / "__pycache__")
        why = f"is owned by uid {NOBODY}"
    elif plant == "a link outside":
        outside = home.parent / "theirs.py"
        outside.write_text("")
        bad = home / "flows" / "helper.py"
        bad.symlink_to(outside)
        why = f"is a link leading to {outside}, outside what is checked"
    else:
        (home / ".venv").mkdir()
        bad = home / "pvcheck" / "venv_module.py"
        bad.symlink_to("../.venv/evil.py")
        why = f"is a link leading to {home / '.venv' / 'evil.py'}, outside what is checked"
    with pytest.raises(StateFileError, match=f"^{bad}: {why}: as root pvcheck uses PVCHECK_HOME"):
        start_worker_in(home, monkeypatch)


def test_a_worker_starts_from_a_roots_own_home_not_walking_git_or_the_venv(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvcheck.flows.serving import HOME_NOT_RUN
    from pvcheck.safeio import require_root_only_tree

    for skipped in (".git", ".venv"):
        (home / skipped).mkdir()
        users(home / skipped, 0o777)
    (home / "pvcheck" / "inside.py").symlink_to("__init__.py")  # a link within: fine
    assert start_worker_in(home, monkeypatch)[1:] == ["worker", "start", "--pool", "pvcheck",
                                                       "--type", "process"]  # fmt: skip
    with pytest.raises(StateFileError, match="holds more than 3 entries; refused"):
        require_root_only_tree(home, "PVCHECK_HOME", skip=HOME_NOT_RUN, max_entries=3)


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


FAKE_STAND_IN = """\
import http.server, os, sys, time
if os.environ.get("FAKE_LISTEN"):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a):
            pass
    port = int(sys.argv[sys.argv.index("--port") + 1])
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
time.sleep(120)
"""


@pytest.fixture
def lab_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A lab config serving the Drone stand-in (a fake one: listening only under
    FAKE_LISTEN) on a free port."""
    from pvcheck import twin
    from pvcheck.api import free_port
    from pvcheck.config import load_config
    from tests.helpers import drone_settings, write_config

    fake = tmp_path / "drone_api.py"
    fake.write_text(FAKE_STAND_IN)
    monkeypatch.setattr(twin, "DRONE_API", fake)
    use_drone = drone_settings(f"http://127.0.0.1:{free_port()}/")

    def lab(raw: dict[str, Any]) -> None:
        use_drone(raw)
        raw["lab"].update(drone_api=True, harness=str(fake), state_dir=str(tmp_path / "lab"))

    cfg = load_config(write_config(tmp_path, lab))
    yield cfg
    assert cfg.lab is not None
    twin.stop_drone_api(cfg.lab)


def test_the_drone_stand_in_is_reused_only_when_it_holds_the_port(
    lab_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: pvcheck's stand-in runs but does not hold its port, and another process
    there answers /healthz; pvcheck would send it the builds and the Drone token."""
    from pvcheck import twin

    with pytest.raises(LabError, match="did not start"):
        twin.ensure_drone_api(lab_cfg, wait_s=0.5)  # runs (pid file written), never listens
    pid_file = lab_cfg.lab.state_dir / "drone-api.pid"
    ours = int(pid_file.read_text())
    port = int(lab_cfg.deploy.drone.url.rsplit(":", 1)[1].strip("/"))
    squatter = http.server.HTTPServer(("127.0.0.1", port), _Healthz)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LabError, match="answers, but not from the Drone API stand-in"):
            twin.ensure_drone_api(lab_cfg, wait_s=5)
    finally:
        squatter.shutdown()
        squatter.server_close()
    assert gone(ours) and not pid_file.exists()  # not reused; nothing of pvcheck's left running


def test_a_stand_in_holding_its_port_is_reused(
    lab_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pvcheck import twin

    monkeypatch.setenv("FAKE_LISTEN", "1")
    twin.ensure_drone_api(lab_cfg)
    pid_file = lab_cfg.lab.state_dir / "drone-api.pid"
    first = pid_file.read_text()
    twin.ensure_drone_api(lab_cfg)
    assert pid_file.read_text() == first


def test_a_stand_in_pid_of_another_user_is_never_ours(tmp_path: Path) -> None:
    from pvcheck import twin

    argv = ["/bin/sleep", "30"]  # (pvcheck's own interpreter is not theirs to run)
    other = subprocess.Popen(argv, user=NOBODY, group=NOBODY)
    try:
        cmdline = Path(f"/proc/{other.pid}/cmdline")
        deadline = time.monotonic() + 10
        while cmdline.read_bytes().split(b"\0")[:-1] != [a.encode() for a in argv]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid_file = tmp_path / "drone-api.pid"
        pid_file.write_text(str(other.pid))
        assert twin._alive(pid_file, argv) is None  # the same command line, someone else's
    finally:
        other.kill()
        other.wait()


# --- the attacker's second read ---------------------------------------------------------------
def test_a_missing_path_in_a_sticky_folder_open_to_all_is_refused(tmp_path: Path) -> None:
    """Anyone may create an entry in /tmp: a git include or docs folder pvcheck checks while
    it is missing could be planted right after."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert writable_by_others(sticky / "missing.inc") == (
        f"missing, and {sticky} is writable by every user: anyone could make it first"
    )
    made = sticky / "roots"
    made.mkdir()
    assert writable_by_others(made / "missing.inc") is None  # inside root's own folder


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL xattr value: version 2, then (tag, perm, id) entries."""
    raw = (2).to_bytes(4, "little")
    for tag, perm, uid in sorted(entries):  # the kernel wants them in tag order
        raw += tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + uid.to_bytes(4, "little")
    return raw


def test_an_acl_letting_another_user_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "acl"
    folder.mkdir(mode=0o755)
    base = [
        (0x01, 7, 0xFFFFFFFF),
        (0x04, 5, 0xFFFFFFFF),
        (0x10, 7, 0xFFFFFFFF),
        (0x20, 5, 0xFFFFFFFF),
    ]
    try:
        os.setxattr(folder, "system.posix_acl_access", _acl(*base, (0x02, 7, NOBODY)))
    except OSError as exc:
        pytest.skip(f"this file system keeps no POSIX ACLs: {exc}")
    # The mode bits show nothing; the named entry lets nobody write.
    assert writable_by_others(folder / "STATUS.md") == (
        f"inside {folder}, which is writable by ACL user {NOBODY}"
    )
    os.setxattr(folder, "system.posix_acl_access", _acl(*base, (0x02, 5, NOBODY)))  # read only
    assert writable_by_others(folder / "STATUS.md") is None
    os.setxattr(folder, "system.posix_acl_default", _acl(*base, (0x08, 7, 1000)))
    assert writable_by_others(folder) == "writable by ACL group 1000"


def test_results_in_a_folder_others_control_or_older_than_the_run_are_refused(
    tmp_path: Path,
) -> None:
    """An earlier run's passing file, moved aside and put back after this run's harness
    wrote a failing one: refused by where it is and by when it was written."""
    from pvcheck.harnessresults import ResultsError, read_results

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    users(theirs)
    planted = theirs / "results.json"
    planted.write_text('{"stages": [{"name": "install", "status": "pass"}]}')
    with pytest.raises(ResultsError, match=f"owned by uid {NOBODY}"):
        read_results(planted)
    ours = tmp_path / "ours"
    ours.mkdir()
    old = ours / "results.json"
    old.write_text('{"stages": [{"name": "install", "status": "pass"}]}')
    past = time.time() - 3600
    os.utime(old, (past, past))
    with pytest.raises(ResultsError, match="written before this harness run started"):
        read_results(old, not_before=time.time() - 60)
    assert read_results(old, not_before=past - 1)["stages"][0]["status"] == "pass"


@pytest.mark.faults
def test_a_docs_folder_the_evidence_cannot_go_to_is_refused_before_the_engine_is_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prefect_api: None
) -> None:
    """The evidence is written at the end of a run: a docs folder others can change (as on an
    orchestrator whose clones another user works in) must stop the run before it deploys
    anything, not after: the "engine" here only counts who connects to it."""
    import socket
    import threading

    from pvcheck.app.cli import main
    from tests.helpers import write_config

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    calls: list[object] = []

    def count() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            calls.append(conn)
            conn.close()

    threading.Thread(target=count, daemon=True).start()
    port = listener.getsockname()[1]

    def counted(raw: dict[str, object]) -> None:
        raw["target"] = {**raw["target"], "docker_host": f"tcp://127.0.0.1:{port}"}  # type: ignore[dict-item]

    config = write_config(tmp_path, counted)
    docs = tmp_path / "docs"
    docs.chmod(0o777)
    try:
        assert main(["run", "--config", str(config)]) == 2
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert str(docs) in err and "machine-docs folder" in err
    assert calls == []  # the engine was never asked
