"""Stacks the way operators deploy them: the docker CLI (`docker stack deploy`, `docker stack
rm`, `docker secret create`, `docker exec`), pointed at the run's engine.

pvcheck prepares the compose file first (pvcheck.compose: interpolated from the recipe's
env file, every object labelled with the run label) and hands the CLI that file, so what the
CLI validates and creates is what an operator's `docker stack deploy` would.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pvcheck.config import TargetConfig
from pvcheck.errors import PvcheckError, TargetUnreachable
from pvcheck.procs import PLAIN_ENV, Finished, run_bounded

log = logging.getLogger(__name__)

LABEL_SPEC = "pvcheck.spec"  # hash of the prepared compose: a re-deploy of the same is a no-op
CLI_TIMEOUT_S = 300.0
MAX_CLI_OUTPUT = 4 * 1024 * 1024
# What the CLI says when it cannot reach the engine (not when the engine refused a request).
# An engine that is away, or back from a restart without its swarm role yet ("This node is
# not a swarm manager" for a few seconds): waited for within the reconnect window, as the
# swarm seam waits for the same answers from the API.
_UNREACHABLE = re.compile(
    r"error during connect|Cannot connect to the Docker daemon|connection refused|"
    r"Is the docker daemon running|connect: no such file or directory|"
    r"This node is not a swarm manager",
    re.IGNORECASE,
)


def engine_not_back(err: str) -> bool:
    """The CLI's message says the engine is away or not back yet (not a real refusal)."""
    return bool(_UNREACHABLE.search(err))


class StackError(PvcheckError):
    """The docker CLI refused or failed; the message is the CLI's own."""


def spec_hash(compose: str, env: Mapping[str, str]) -> str:
    """Pure: what a deploy would create, as a short hash (compose text and the variables)."""
    digest = hashlib.sha256(compose.encode())
    for key in sorted(env):
        digest.update(f"\0{key}={env[key]}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DockerCli:
    """The docker CLI against one engine (its socket here, or the ssh-forwarded one). Like
    the swarm seam, an engine that stops answering is waited for within `reconnect_s` (every
    call here is safe to repeat), then reported unreachable (exit 3)."""

    docker_url: str
    where: str = "docker engine"  # how errors name the target
    reconnect_s: float = 0.0
    timeout_s: float = CLI_TIMEOUT_S

    @classmethod
    def for_target(cls, target: TargetConfig) -> DockerCli:
        """The target's engine: its socket here, or the ssh-forwarded one."""
        from pvcheck.hosts import host_for

        url = host_for(target).docker_url()
        return cls(url, f"{target.docker_host}: docker engine", target.reconnect_s)

    def _env(self, config_dir: str) -> dict[str, str]:
        # A plain environment: the engine named here and an empty client config (never the
        # operator's contexts or credentials). Nothing of pvcheck's own environment reaches
        # the CLI, so nothing of it can reach a container through a bare variable.
        return {**PLAIN_ENV, "DOCKER_HOST": self.docker_url, "DOCKER_CONFIG": config_dir}

    def run(
        self,
        args: list[str],
        stdin: bytes | None = None,
        what: str = "",
        max_stdout: int = MAX_CLI_OUTPUT,
    ) -> Finished:
        """Run `docker ARGS`; a refusal raises StackError with the CLI's message, an engine
        that does not answer (past the reconnect window) TargetUnreachable."""
        argv = ["docker", *args]
        log.info("%s", shlex.join(argv))
        what = what or shlex.join(argv[:3])
        deadline = time.monotonic() + self.reconnect_s
        while True:
            with tempfile.TemporaryDirectory(prefix="pvcheck-docker-") as config_dir:
                done = run_bounded(
                    argv, self.timeout_s, stdin, max_stdout, env=self._env(config_dir)
                )
            err = done.stderr.decode("utf-8", errors="replace").strip()[-800:]
            if done.truncated:
                raise StackError(f"{what}: more than {max_stdout} bytes of output; stopped")
            if done.rc == 0:
                return done
            if done.rc is None:
                raise StackError(f"{what}: no answer within {self.timeout_s:g}s; stopped")
            if not engine_not_back(err):
                raise StackError(f"{what}: {err or f'exit {done.rc}, no message'}")
            if time.monotonic() >= deadline:
                raise TargetUnreachable(f"{self.where} stopped answering: {err}")
            log.warning("retrying %s: the engine does not answer (%s)", what, err[-200:])
            time.sleep(1.0)

    def stack_deploy(
        self, stack: str, compose: str, env: Mapping[str, str] | None = None, where: str = ""
    ) -> None:
        """`docker stack deploy` of the prepared compose text, given on stdin (its paths are
        absolute; it is never written to disk). Images are used as the engine has them
        (`--resolve-image never`): no registry is asked. The text is already interpolated:
        `env` is not passed to the CLI."""
        self.run(
            ["stack", "deploy", "--compose-file", "-", "--resolve-image", "never", "--", stack],
            stdin=compose.encode(),
            what=f"docker stack deploy {stack} ({where or 'compose'})",
        )

    def stack_rm(self, stacks: list[str]) -> None:
        """`docker stack rm` of every named stack in one call (the CLI removes them in turn,
        services first, while the engine releases their endpoints in the background)."""
        if stacks:
            self.run(["stack", "rm", "--", *stacks], what=f"docker stack rm {' '.join(stacks)}")

    def secret_create(self, name: str, value: bytes, labels: Mapping[str, str]) -> None:
        """`docker secret create` from stdin: the value is never an argument or a file."""
        args = ["secret", "create"]
        for key, val in sorted(labels.items()):
            args += ["--label", f"{key}={val}"]
        self.run([*args, "--", name, "-"], stdin=value, what=f"docker secret create {name}")

    def exec(
        self, container: str, argv: list[str], stdin: bytes | None = None, max_stdout: int = 0
    ) -> bytes:
        flags = ["-i"] if stdin is not None else []
        done = self.run(
            ["exec", *flags, container, *argv],
            stdin=stdin,
            what=f"docker exec {container} {argv[0]}",
            max_stdout=max_stdout or MAX_CLI_OUTPUT,
        )
        return bytes(done.stdout)

    def task_container(self, service: str, run_label: str) -> str:
        """A running container of the service (its task) that carries this run's label."""
        done = self.run(
            [
                "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                "--filter", f"label={run_label}", "--filter", "status=running",
            ]
        )  # fmt: skip
        ids = done.stdout.decode().split()
        if not ids:
            raise StackError(f"no running container of service {service}")
        return ids[0]
