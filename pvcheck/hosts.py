"""Where the verified host is reached: on this machine, or over ssh as its operators do.

A `Host` turns an argument list into one that runs on the target host (the docker log, the
upgrade guard's detection, a harness, a curl from the host, a listing of the active-run
folder) and says how an operator would paste a command. Over ssh, the docker API goes
through an ssh-forwarded unix socket (`ssh -L local.sock:/var/run/docker.sock`), so every
docker call keeps docker-py's timeouts and pvcheck's retries. Host keys are always verified
(StrictHostKeyChecking=yes); a missing or changed key, a refused login or a lost connection
raise TargetUnreachable (exit 3).
Remote commands are argument lists quoted for the remote shell one by one: nothing from the
config is ever interpreted by a shell.
"""

from __future__ import annotations

import atexit
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pvcheck.config import SSH_URL, TargetConfig
from pvcheck.errors import TargetUnreachable
from pvcheck.procs import MAX_OUTPUT, run_bounded
from pvcheck.safeio import require_root_only
from pvcheck.seams import HostCommands


class BoundedRun:
    """How every host runs a command: `argv` turned into the host's own argument list, under
    pvcheck's time and output bounds (run_on)."""

    def run(
        self, argv: list[str], timeout_s: float, stdin: str | None = None, max_stdout: int = 0
    ) -> tuple[int, str, str]:
        return run_on(cast(HostCommands, self), argv, timeout_s, stdin, max_stdout or MAX_OUTPUT)


class LocalHost(BoundedRun):
    """The target is this machine."""

    remote = False

    def __init__(self, target: TargetConfig) -> None:
        self.target = target

    def describe(self) -> str:
        return f"{self.target.docker_host} on this machine"

    def argv(self, argv: list[str]) -> list[str]:
        return list(argv)

    def how(self, command: str) -> str:
        return command

    def docker_url(self) -> str:
        return self.target.docker_host

    def failure(self, stderr: str) -> str:
        return stderr.strip()[-300:]


@dataclass
class SshHost(BoundedRun):
    """The target is reached with the system ssh client."""

    target: TargetConfig
    user: str | None
    host: str
    port: int
    remote = True
    _tunnel: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _socket: Path | None = field(default=None, repr=False)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        ssh = self.target.ssh
        if ssh.config_file is not None:  # as at load: still root's alone, at each use
            require_root_only(ssh.config_file, "target.ssh.config_file")
        opts = [
            *(["-F", str(ssh.config_file)] if ssh.config_file is not None else []),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={int(max(1, ssh.connect_timeout_s))}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=2",
            "-p", str(self.port),
        ]  # fmt: skip
        if ssh.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
        if ssh.identity_file is not None:
            opts += ["-o", "IdentitiesOnly=yes", "-i", str(ssh.identity_file)]
        return opts

    def describe(self) -> str:
        ssh = self.target.ssh
        kh = str(ssh.known_hosts or "")
        if not kh:  # without -o UserKnownHostsFile: ssh's own, or what -F's file names
            kh = (
                f"the known hosts {ssh.config_file} names"
                if ssh.config_file
                else "~/.ssh/known_hosts"
            )
        return (
            f"ssh {self.destination} port {self.port} (host key verified against {kh}); "
            f"docker API through the forwarded socket {self.target.ssh.docker_socket}"
        )

    def argv(self, argv: list[str]) -> list[str]:
        remote = " ".join(shlex.quote(a) for a in argv)
        return ["ssh", *self.options(), "--", self.destination, remote]

    def how(self, command: str) -> str:
        """The command as an operator pastes it: `ssh [-p P] [-i KEY] host 'command'`."""
        ssh = self.target.ssh
        parts = ["ssh"]
        if ssh.config_file is not None:
            parts += ["-F", str(ssh.config_file)]
        if self.port != 22:
            parts += ["-p", str(self.port)]
        if ssh.identity_file is not None:
            parts += ["-i", str(ssh.identity_file)]
        if ssh.known_hosts is not None:
            parts += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
        parts.append(self.destination)
        return " ".join(shlex.quote(p) for p in parts) + " " + shlex.quote(command)

    def failure(self, stderr: str) -> str:
        return ssh_failure(self.destination, self.port, stderr)

    # --- the docker socket tunnel ------------------------------------------------------------
    def docker_url(self) -> str:
        with _TUNNELS_LOCK:
            if self._tunnel is None or self._tunnel.poll() is not None:
                self._open_tunnel()
        return f"unix://{self._socket}"

    def _open_tunnel(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="pvcheck-ssh-"))
        sock = folder / "docker.sock"
        argv = [
            "ssh", *self.options(),
            "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
            "-L", f"{sock}:{self.target.ssh.docker_socket}",
            "--", self.destination,
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.target.ssh.connect_timeout_s + 5
        while not sock.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise TargetUnreachable(ssh_failure(self.destination, self.port, err))
            if time.monotonic() > deadline:
                proc.kill()
                raise TargetUnreachable(
                    f"ssh {self.destination} port {self.port}: no forwarded docker socket "
                    f"within {self.target.ssh.connect_timeout_s:g}s"
                )
            time.sleep(0.05)
        self._tunnel, self._socket = proc, sock
        atexit.register(_close, proc)


def _close(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def ssh_failure(destination: str, port: int, stderr: str) -> str:
    """Pure: ssh's complaint turned into what went wrong and what to do."""
    where = f"ssh {destination} port {port}"
    text = stderr.strip().splitlines()
    last = text[-1] if text else "ssh exited without a message"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return f"{where}: the host key CHANGED (not the one in known_hosts); refusing to connect"
    if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr:
        return f"{where}: the host key is not in known_hosts (or does not match); refusing"
    if "Permission denied" in stderr:
        return f"{where}: login refused ({last})"
    if "Connection refused" in stderr:
        return f"{where}: connection refused (is sshd running?)"
    return f"{where}: {last}"


Host = LocalHost | SshHost
_TUNNELS_LOCK = threading.Lock()
_HOSTS: dict[tuple[str, str], SshHost] = {}


def host_for(target: TargetConfig) -> Host:
    """One Host per target and ssh settings in this process (its tunnel is shared)."""
    if not target.docker_host.startswith("ssh://"):
        return LocalHost(target)
    found = SSH_URL.match(target.docker_host)
    assert found is not None  # validated by TargetConfig
    key = (target.docker_host, target.ssh.model_dump_json())
    with _TUNNELS_LOCK:
        if key not in _HOSTS:
            _HOSTS[key] = SshHost(target, found["user"], found["host"], int(found["port"] or 22))
        return _HOSTS[key]


def run_on(
    host: HostCommands,
    argv: list[str],
    timeout_s: float,
    stdin: str | None = None,
    max_stdout: int = MAX_OUTPUT,
) -> tuple[int, str, str]:
    """Run argv on the host; (exit code, stdout, stderr). ssh's own failure (255) raises;
    past the deadline the whole process group is killed and TimeoutExpired raised."""
    done = run_bounded(
        host.argv(argv), timeout_s, stdin.encode() if stdin is not None else None, max_stdout
    )
    if done.rc is None:
        raise subprocess.TimeoutExpired(argv, timeout_s)
    stderr = done.stderr.decode("utf-8", errors="replace")
    if host.remote and done.rc == 255:
        raise TargetUnreachable(host.failure(stderr))
    rc = 0 if done.truncated and done.rc < 0 else done.rc  # stopped by us at the cap
    return rc, done.stdout.decode("utf-8", errors="replace"), stderr
