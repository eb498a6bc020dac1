"""Remote targets: an sshd started here on 127.0.0.1 (its own port, a key made for the test,
a known_hosts entry) fronts the lab host; pvcheck verifies it only through ssh."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pvcheck.api import free_port
from pvcheck.app.cli import main
from pvcheck.config import ActiveRunsConfig, Config, LogsConfig, load_config
from pvcheck.deploy import judge_outcome
from pvcheck.deploy.active import active_runs
from pvcheck.deploy.command import CommandDriver
from pvcheck.hosts import host_for
from pvcheck.logscan import make_log_source
from pvcheck.seams import LogUnreadable, Seams
from pvcheck.stacks import list_residue
from pvcheck.swarm import LABEL_RUN, Swarm
from tests.fakes import FakeSwarm, fake_seams
from tests.helpers import descendants, spawn_run, wait_for_throwaways, write_config
from tests.integration.test_flow_m1 import check, run
from tests.unit.test_deploy_drivers import HARNESS, command_cfg, results_doc


def _ssh_seams(cfg: Config) -> Seams:
    """Fakes but for the host: the command driver reaches the harness over the real ssh."""
    return replace(fake_seams(FakeSwarm(["hello_app"])), host=host_for(cfg.target))


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    folder: Path
    key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation folder
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.folder / "sshd_config")],
            stderr=open(self.folder / "sshd.log", "ab"),  # noqa: SIM115 (the child keeps it)
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _listening(self.port):
            assert self.proc.poll() is None, (self.folder / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen"
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop sshd and every session it serves (what a host going away looks like)."""
        if self.proc is not None:
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        pytest.skip("openssh-server is not installed (.ci/bootstrap installs it)")
    folder = tmp_path_factory.mktemp("sshd")
    port = free_port()
    host_pub = _keygen(folder / "host_ed25519")
    client_pub = _keygen(folder / "id_ed25519")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_ed25519'}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "AllowStreamLocalForwarding yes\nX11Forwarding no\n"
    )
    server = Sshd(port, folder, folder / "id_ed25519", known)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _over_ssh(sshd: Sshd, **ssh: Any) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["target"].update(docker_host=sshd.url, reconnect_s=5)
        raw["target"]["ssh"] = {
            "identity_file": str(sshd.key),
            "known_hosts": str(sshd.known_hosts),
            "connect_timeout_s": 5,
            **ssh,
        }
        # One route is checked from the host itself, as `ssh host curl --connect-to ...`.
        raw["routes"][1]["check_from"] = "host"

    return mutate


def test_full_run_over_ssh_matches_a_local_run(
    lab: Config, engine: Swarm, sshd: Sshd, tmp_path: Path
) -> None:
    local_dir, remote_dir = tmp_path / "local", tmp_path / "remote"
    local_dir.mkdir()
    remote_dir.mkdir()
    rc_local, local = run(write_config(local_dir), local_dir)
    rc, remote = run(write_config(remote_dir, _over_ssh(sshd)), remote_dir)
    assert (rc, remote["verdict"]) == (rc_local, local["verdict"]) == (0, "pass"), remote["stages"]
    net_local, net_remote = (r["facts"]["before"]["network"] for r in (local, remote))
    for fact in ("subnet", "capacity", "vips", "task_ips", "lb_endpoints"):
        assert net_remote[fact] == net_local[fact], fact
    assert [s["name"] for s in remote["facts"]["after"]["services"]] == [
        s["name"] for s in local["facts"]["after"]["services"]
    ]
    assert remote["target_via"].startswith(f"ssh root@127.0.0.1 port {sshd.port}")
    assert check(remote, "route.drone-health")["status"] == "pass"
    assert remote["logs"]["source"].startswith("ssh ")
    status = (remote_dir / "docs" / "STATUS-pvcheck.md").read_text()
    assert f"ssh -p {sshd.port} -i {sshd.key}" in status  # HOW, as an operator pastes it
    assert "Reached: ssh root@127.0.0.1" in status
    assert not any(list_residue(engine, f"{LABEL_RUN}={remote['run_id']}").values())


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["wrong-host-key", "refused-login"])
def test_bad_host_key_or_login_exits_3(
    lab: Config,
    sshd: Sshd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    if fault == "wrong-host-key":
        other = _keygen(tmp_path / "other_host")
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
        mutate, expect = _over_ssh(sshd, known_hosts=str(known)), "host key"
    else:
        _keygen(tmp_path / "stranger")
        mutate, expect = _over_ssh(sshd, identity_file=str(tmp_path / "stranger")), "login refused"
    config = write_config(tmp_path, mutate)
    assert main(["run", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert expect in err and sshd.url in err
    journal = (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
    assert "UNREACHABLE" in journal and not (tmp_path / "docs" / "STATUS-pvcheck.md").exists()


@pytest.mark.faults
def test_sshd_stopped_mid_run_exits_3_and_the_next_run_reaps(
    lab: Config, engine: Swarm, sshd: Sshd, tmp_path: Path
) -> None:
    config = write_config(tmp_path, _over_ssh(sshd))
    log, out = tmp_path / "run.log", tmp_path / "report.json"
    proc = spawn_run(config, log, "--json", str(out))
    try:
        run_id = wait_for_throwaways(engine, proc)
        sshd.stop()
        assert proc.wait(timeout=180) == 3, log.read_text()[-3000:]
    finally:
        if sshd.proc is None:
            sshd.start()
    assert f"{sshd.url}: docker engine stopped answering" in log.read_text()
    journal = (tmp_path / "docs" / "JOURNAL-pvcheck.md").read_text()
    assert run_id in journal and "the next run's janitor removes this run's objects" in journal
    rc, report = run(config, tmp_path)
    janitor = check(report, "teardown.janitor")
    assert janitor["status"] == "pass" and run_id in janitor["found"], janitor
    assert not any(list_residue(engine, f"{LABEL_RUN}={run_id}").values())
    assert rc == 0, report["stages"]


def test_harness_runs_on_the_host_and_its_results_come_back(sshd: Sshd, tmp_path: Path) -> None:
    """The command driver over ssh: the harness is started by `ssh host env ... harness`, and
    its results.json is read back over ssh, with the same judging as a local one."""
    # The harness reports, as its version, the SSH_CONNECTION sshd gave it.
    doc = f"{{**{results_doc(install='pass', upgrade='fail')!r}, 'version': os.environ.get('SSH_CONNECTION', 'not over ssh')}}"
    cfg = command_cfg(tmp_path, HARNESS.format(doc=doc, rc=1), 30, _over_ssh(sshd))
    outcome = CommandDriver(_ssh_seams(cfg), cfg, "pv-1-abc").run()
    checks = {c.id: str(c.status) for c in judge_outcome(outcome, ["install", "upgrade"], "proxy")}
    assert checks["deploy.tier.install"] == "pass" and checks["deploy.tier.upgrade"] == "fail"
    assert outcome.info["exit_code"] == "1" and outcome.info["recipe"] == "hello"
    assert outcome.info["version"].startswith("127.0.0.1 ")  # it ran in an ssh session
    # Without a results file on the host, the error says how an operator would look for it.
    (tmp_path / "harness.py").write_text("import sys; sys.exit(0)\n")
    missing = CommandDriver(_ssh_seams(cfg), cfg, "pv-1-abc").run()
    assert missing.error and f"ssh -p {sshd.port}" in missing.error
    assert "wrote no results file" in missing.error
    # A broken file on the host is named by where it is there, not by a local copy.
    (tmp_path / "harness.py").write_text(
        "import os; open(os.environ['PVCHECK_RESULTS'], 'w').write('{\"stages\": [')\n"
    )
    broken = CommandDriver(_ssh_seams(cfg), cfg, "pv-1-abc").run()
    assert broken.error and broken.error.startswith(f"ssh -p {sshd.port} ")
    assert f"cat {tmp_path / 'results.json'}': not valid JSON" in broken.error


@pytest.mark.faults
def test_a_harness_past_its_timeout_is_stopped_on_the_host(sshd: Sshd, tmp_path: Path) -> None:
    """Killing the local ssh client would leave the harness running on the host: the host's
    own `timeout` must end it, and the run reports a timeout."""
    script = (
        "import os, time\n"
        "open(os.environ['PVCHECK_RESULTS'] + '.pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(300)\n"
    )
    cfg = command_cfg(tmp_path, script, 2, _over_ssh(sshd))
    outcome = CommandDriver(_ssh_seams(cfg), cfg, "pv-1-abc").run()
    assert outcome.info["exit_code"] == "timeout"
    assert outcome.error == "harness did not finish within 2s; killed"
    assert float(outcome.info["seconds"]) < 2 + 5 + 3  # the host's TERM, not the backstop
    pid = int((tmp_path / "results.json.pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the harness (pid {pid}) still runs on the host"
        time.sleep(0.2)


@pytest.mark.faults
def test_the_active_runs_folder_is_read_on_the_host(sshd: Sshd, tmp_path: Path) -> None:
    """Recipe runs register in a folder on the host: over ssh it is listed there."""
    cfg = load_config(write_config(tmp_path, _over_ssh(sshd)))
    host = host_for(cfg.target)
    folder = tmp_path / "cc-ci-active"

    def found(path: Path) -> list[str]:
        return active_runs(ActiveRunsConfig(folder=path), FakeSwarm(), host=host)

    assert found(folder) == []  # no folder on the host: no run has registered
    folder.mkdir()
    (folder / "custom-html.lab.test").write_text("")
    (folder / ".keep").write_text("")
    assert found(folder) == [f"{folder}/custom-html.lab.test"]
    (tmp_path / "a-file").write_text("")
    (problem,) = found(tmp_path / "a-file")
    assert problem.startswith(f"{tmp_path}/a-file cannot be listed (")
    assert "Not a directory" in problem and problem.endswith("; a run may be active")


@pytest.mark.faults
def test_journald_is_read_on_the_host_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    """`logs.source = "journald"` runs journalctl on the host. This host has journalctl but
    keeps no journal (no systemd): that must be reported as an unread log, never as a clean
    one. The message also shows the window arguments reached journalctl intact (a mangled
    `--since` would fail with "Failed to parse timestamp" instead)."""
    if not Path("/usr/bin/journalctl").exists():
        pytest.skip("journalctl is not installed on this host")
    cfg = load_config(write_config(tmp_path, _over_ssh(sshd)))
    source = make_log_source(LogsConfig(source="journald", unit="docker"), host_for(cfg.target))
    assert source.describe().startswith(f"ssh -p {sshd.port} ")
    assert source.describe().endswith("'journalctl -u docker'")
    now = datetime.now(UTC)
    with pytest.raises(LogUnreadable, match="No journal files were found"):
        list(source.lines(now - timedelta(hours=1), now))
