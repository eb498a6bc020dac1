"""A second machine on this one, for the two-machine cc-ci twin (lab only).

cc-ci is two machines: the orchestrator, where pvcheck, the phase's files and the /upgrade-all
skill live, drives the swarm host over `ssh cc-ci`. The twin's host is made here as a real
second machine would look from the orchestrator: its own network namespace (a veth link on a
link-local /30, nothing else), its own mount namespace (its own /run, /var/log,
/var/lib/docker and the configured private folders), its own dockerd and swarm, and an sshd
that a generated ssh config names `cc-ci`. Nothing on it is reached but through that link,
and the lab reaches its engine through a second socket of its dockerd under the lab's state
folder (the run under test never does: it goes over ssh).

Files under LAB_STATE/machine/: ssh/ (host and client keys, known_hosts, authorized_keys, the
ssh config and sshd_config), docker/ and log/ (its /var/lib/docker and /var/log), dirs/ (its
private folders), docker.sock (the lab's way to its engine), launcher.pid and launcher.log.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvcheck.config import LabConfig, MachineConfig
from pvcheck.errors import LabError, StateFileError, TargetUnreachable
from pvcheck.safeio import atomic_write, read_capped, require_root_only_tree, writable_by_others
from pvcheck.swarm import Swarm

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
START_S = 90.0  # dockerd and sshd answering after a cold start
STOP_S = 60.0  # dockerd stopping its containers


@dataclass(frozen=True)
class Machine:
    spec: MachineConfig
    root: Path

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_config(self) -> Path:
        """`ssh -F` this file reaches the machine as `ssh <name>`."""
        return self.ssh_dir / "config"

    @property
    def engine_url(self) -> str:
        """The lab's own way to the machine's engine (a run under test goes over ssh)."""
        return f"unix://{self.root / 'docker.sock'}"

    @property
    def pid_file(self) -> Path:
        return self.root / "launcher.pid"

    @property
    def interfaces(self) -> tuple[str, str]:
        """(this machine's end, the machine's end) of the veth link: names under 15 bytes."""
        tag = hashlib.sha256(self.spec.netns.encode()).hexdigest()[:6]
        return f"pvm{tag}h", f"pvm{tag}n"

    def pid(self) -> int | None:
        """The launcher's pid while it runs in the machine's network namespace."""
        try:
            pid = int((read_capped(self.pid_file, 64) or b"").strip())
            ns = os.stat(f"/run/netns/{self.spec.netns}").st_ino
            if os.readlink(f"/proc/{pid}/ns/net") != f"net:[{ns}]":
                return None
        except (OSError, ValueError, StateFileError):
            return None
        return pid

    def enter(self, argv: list[str]) -> list[str]:
        """`argv` as run on the machine (its mounts and its network)."""
        pid = self.pid()
        if pid is None:
            raise LabError(f"the {self.spec.name} machine is not running (pvcheck lab up)")
        return ["nsenter", "-t", str(pid), "-m", "-n", "--", *argv]


def machine_of(lab: LabConfig) -> Machine | None:
    return Machine(lab.machine, lab.state_dir / "machine") if lab.machine else None


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()[-300:]}")
    return done


def _link(m: Machine) -> None:
    """The namespace and its veth link, idempotently."""
    ns, (here_if, there_if) = m.spec.netns, m.interfaces
    prefix = m.spec.link.prefixlen
    if _run(["ip", "link", "show", here_if], check=False).returncode != 0:
        _require_free(m.spec.link)
    if ns not in _run(["ip", "netns", "list"]).stdout.split():
        log.info("ip netns add %s", ns)
        _run(["ip", "netns", "add", ns])
    if _run(["ip", "link", "show", here_if], check=False).returncode != 0:
        _run(["ip", "link", "add", here_if, "type", "veth", "peer", "name", there_if])
        _run(["ip", "link", "set", there_if, "netns", ns])
        _run(["ip", "addr", "add", f"{m.spec.here}/{prefix}", "dev", here_if])
        _run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{m.spec.address}/{prefix}",
              "dev", there_if])  # fmt: skip
    _run(["ip", "link", "set", here_if, "up"])
    for dev in ("lo", there_if):
        _run(["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"])


def _require_free(link: ipaddress.IPv4Network) -> None:
    """Refuse a link whose addresses this machine already has or routes elsewhere: the
    machine's route would take traffic meant for them."""
    said = _run(["ip", "-o", "-4", "addr", "show"]).stdout + _run(["ip", "-4", "route"]).stdout
    for word in said.split():
        try:
            net = ipaddress.ip_interface(word).network if "/" in word else None
        except ValueError:
            continue
        if net is not None and net.prefixlen > 0 and net.overlaps(link):
            raise LabError(f"{link} overlaps {net}, which this machine already has; choose "
                           "another lab.machine.link")  # fmt: skip


def _keygen(path: Path) -> str:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)])
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])  # type and key


def _ssh_files(m: Machine) -> None:
    d = m.ssh_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    host_pub = _keygen(d / "host_ed25519")
    client_pub = _keygen(d / "id_ed25519")
    files = {
        "authorized_keys": client_pub + "\n",
        "known_hosts": f"{m.spec.address} {host_pub}\n",
        "config": (
            f"Host {m.spec.name}\n  HostName {m.spec.address}\n  User root\n"
            f"  IdentityFile {d / 'id_ed25519'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        ),
        "sshd_config": (
            f"ListenAddress {m.spec.address}\nPort 22\nHostKey {d / 'host_ed25519'}\n"
            f"PidFile /run/sshd.pid\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\n"
            "AllowStreamLocalForwarding yes\nX11Forwarding no\n"
        ),
    }
    for name, text in files.items():
        atomic_write(d / name, text, new_mode=0o600)


def _script(m: Machine) -> str:
    """What the launcher runs inside the new mount namespace: the machine's own folders,
    then dockerd and sshd, waited on (the launcher's life is the machine's)."""
    q = shlex.quote
    lines = ["set -eu", "mount -t tmpfs -o mode=0755,size=256m pvcheck-machine /run",
             "mkdir -p /run/lock /run/sshd && chmod 1777 /run/lock"]  # fmt: skip
    binds = [(m.root / "log", "/var/log"), (m.root / "docker", "/var/lib/docker")]
    binds += [(m.root / "dirs" / _escaped(d), str(d)) for d in m.spec.private_dirs]
    for source, target in binds:
        lines.append(f"mount --bind {q(str(source))} {q(target)}")
    lines += [
        # Its own daemon config ({}), never this machine's /etc/docker/daemon.json (whose
        # data-root would be the real engine's), and every root named.
        f"dockerd --config-file {q(str(m.root / 'daemon.json'))}"
        " --data-root /var/lib/docker --exec-root /var/run/docker --pidfile /var/run/docker.pid"
        f" --host unix:///var/run/docker.sock --host {q(m.engine_url)}"
        " --group root --cgroup-parent /pvcheck-machine >>/var/log/dockerd.log 2>&1 </dev/null &",
        f"{SSHD} -D -e -f {q(str(m.ssh_dir / 'sshd_config'))} >>/var/log/sshd.log 2>&1 &",
        "wait",
    ]
    return "\n".join(lines) + "\n"


def _escaped(path: Path) -> str:
    return str(path).strip("/").replace("/", "_")


def _answers(m: Machine) -> bool:
    try:
        Swarm.connect(m.engine_url, timeout_s=5)
    except TargetUnreachable:
        return False
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((m.spec.address, 22)) == 0


def ensure_machine(lab: LabConfig) -> Machine:
    """The machine up (idempotent): namespace and link, ssh files, dockerd and sshd."""
    m = machine_of(lab)
    if m is None:
        raise LabError("this lab has no [lab.machine]")
    if os.geteuid() != 0:
        raise LabError("a lab machine needs root (namespaces, mounts, a dockerd)")
    # Keys, sshd's authorized_keys and configs live here: root's alone, or anyone who could
    # change them could log in to the machine, which shares this machine's / as root.
    m.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        require_root_only_tree(m.root, "the lab machine's folder", skip=frozenset({"docker"}))
    except StateFileError as exc:
        raise LabError(str(exc)) from None
    for folder in (m.root / "log", m.root / "docker"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o710)
    atomic_write(m.root / "daemon.json", "{}\n", new_mode=0o600)
    for d in m.spec.private_dirs:
        # Its mount point here is made (and later mounted over) only where no other user
        # could have put a link or a folder of theirs first.
        why = writable_by_others(d)
        if why:
            raise LabError(f"lab.machine.private_dirs: {d} is {why}")
        (m.root / "dirs" / _escaped(d)).mkdir(parents=True, exist_ok=True, mode=0o755)
        d.mkdir(parents=True, exist_ok=True)
    _link(m)
    _ssh_files(m)
    if m.pid() is None:
        log.info("starting the %s machine in netns %s", m.spec.name, m.spec.netns)
        (m.root / "docker.sock").unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(m.root / "launcher.log", flags, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                # nsenter, not `ip netns exec`: that one mounts a new /sys, which hides the
                # cgroup hierarchies dockerd needs.
                ["nsenter", f"--net=/run/netns/{m.spec.netns}", "--", "unshare", "--mount",
                 "--propagation", "private", "--", "/bin/sh", "-c", _script(m)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        atomic_write(m.pid_file, f"{proc.pid}\n", new_mode=0o600)
    deadline = time.monotonic() + START_S
    while not _answers(m):
        if m.pid() is None or time.monotonic() > deadline:
            raise LabError(
                f"the {m.spec.name} machine did not come up; see {m.root / 'launcher.log'} "
                f"and {m.root / 'log'}"
            )
        time.sleep(1)
    return m


def stop_machine(lab: LabConfig) -> bool:
    """Stop the machine's dockerd and sshd and remove its namespace and link (its data stays
    under the state folder, as an engine's does); whether it was running."""
    m = machine_of(lab)
    if m is None:
        return False
    running = m.pid() is not None
    # Every process in its network namespace, the launcher's or not (dockerd and sshd outlive
    # a launcher killed on its own): dockerd stops its containers on SIGTERM, as on shutdown.
    members = _in_netns(m.spec.netns)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while _in_netns(m.spec.netns) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _in_netns(m.spec.netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    m.pid_file.unlink(missing_ok=True)
    _run(["ip", "netns", "del", m.spec.netns], check=False)
    _run(["ip", "link", "del", m.interfaces[0]], check=False)
    # Its folders' mount points here stay (empty): removing one might remove a folder this
    # machine had before.
    return running or bool(members)


def _in_netns(netns: str) -> list[int]:
    """The pids of processes in that network namespace (none when it does not exist)."""
    try:
        wanted = f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == wanted:
                    found.append(int(entry.name))
    return found
