"""Stacks the way operators deploy them: the docker CLI (`docker stack deploy`, `docker stack
rm`, `docker secret create`, `docker exec`), pointed at the run's engine.

pvcheck prepares the compose file first (pvcheck.stackfile: interpolated from the recipe's
env file, every object labelled with the run label) and hands the CLI that file, so what the
CLI validates and creates is what an operator's `docker stack deploy` would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pvcheck.errors import PvcheckError
from pvcheck.procs import PLAIN_ENV, Finished, run_bounded

log = logging.getLogger(__name__)

LABEL_SPEC = "pvcheck.spec"  # hash of the prepared compose: a re-deploy of the same is a no-op
CLI_TIMEOUT_S = 300.0
MAX_CLI_OUTPUT = 4 * 1024 * 1024


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
    """The docker CLI against one engine (its socket here, or the ssh-forwarded one)."""

    docker_url: str
    timeout_s: float = CLI_TIMEOUT_S

    def _env(self, extra: Mapping[str, str], config_dir: str) -> dict[str, str]:
        # A plain environment: the engine named here, an empty client config (never the
        # operator's contexts or credentials), and the recipe's variables for interpolation.
        return {
            **PLAIN_ENV,
            "DOCKER_HOST": self.docker_url,
            "DOCKER_CONFIG": config_dir,
            "HOME": config_dir,
            **extra,
        }

    def run(
        self,
        args: list[str],
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        what: str = "",
    ) -> Finished:
        """Run `docker ARGS`; a non-zero exit raises StackError with the CLI's message."""
        argv = ["docker", *args]
        log.info("%s", shlex.join(argv))
        with tempfile.TemporaryDirectory(prefix="pvcheck-docker-") as config_dir:
            done = run_bounded(
                argv,
                timeout_s or self.timeout_s,
                stdin,
                MAX_CLI_OUTPUT,
                env=self._env(env or {}, config_dir),
            )
        if done.rc != 0:
            err = done.stderr.decode("utf-8", errors="replace").strip()
            why = "no answer in time; stopped" if done.rc is None else (err[-800:] or "no message")
            raise StackError(f"{what or shlex.join(argv[:3])}: {why}")
        return done

    def stack_deploy(
        self, stack: str, compose: str, env: Mapping[str, str], where: str = ""
    ) -> None:
        """`docker stack deploy` of the prepared compose text. Images are used as the engine
        has them (`--resolve-image never`): no registry is asked."""
        with tempfile.TemporaryDirectory(prefix="pvcheck-stack-") as folder:
            path = Path(folder) / "compose.yml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(compose)
            self.run(
                ["stack", "deploy", "--compose-file", str(path), "--resolve-image", "never", stack],
                env=env,
                what=f"docker stack deploy {stack} ({where or 'compose'})",
            )

    def stack_rm(self, stacks: list[str]) -> None:
        """`docker stack rm` of every named stack in one call (the CLI removes them in turn,
        services first, while the engine releases their endpoints in the background)."""
        if stacks:
            self.run(["stack", "rm", *stacks], what=f"docker stack rm {' '.join(stacks)}")

    def secret_create(self, name: str, value: bytes, labels: Mapping[str, str]) -> None:
        """`docker secret create` from stdin: the value is never an argument or a file."""
        args = ["secret", "create"]
        for key, val in sorted(labels.items()):
            args += ["--label", f"{key}={val}"]
        self.run([*args, name, "-"], stdin=value, what=f"docker secret create {name}")

    def exec(self, container: str, argv: list[str], stdin: bytes | None = None) -> bytes:
        flags = ["-i"] if stdin is not None else []
        done = self.run(["exec", *flags, container, *argv], stdin=stdin)
        return bytes(done.stdout)

    def task_container(self, service: str) -> str:
        """A running container of the service (its task), by the swarm's own label."""
        done = self.run(
            [
                "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                "--filter", "status=running",
            ]
        )  # fmt: skip
        ids = done.stdout.decode().split()
        if not ids:
            raise StackError(f"no running container of service {service}")
        return ids[0]
