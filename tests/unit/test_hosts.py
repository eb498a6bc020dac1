"""The ssh seam, pure parts: target URLs, quoting of remote commands, operator-form HOW
commands, and ssh's failures turned into clear messages."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from pvcheck.config import RouteConfig, TargetConfig, load_config
from pvcheck.errors import ConfigError
from pvcheck.hosts import LocalHost, SshHost, host_for, ssh_failure
from pvcheck.routes import curl_argv
from tests.helpers import write_config


def _target(url: str, **ssh: Any) -> TargetConfig:
    return TargetConfig(name="t", docker_host=url, ssh=ssh)


def test_local_target_runs_commands_as_they_are() -> None:
    host = host_for(_target("unix:///var/run/docker.sock"))
    assert isinstance(host, LocalHost) and host.argv(["docker", "ps"]) == ["docker", "ps"]


def test_ssh_target_quotes_each_argument_for_the_remote_shell() -> None:
    host = host_for(_target("ssh://ops@cc-ci.example:2200", known_hosts="/k", identity_file="/i"))
    assert isinstance(host, SshHost) and (host.user, host.host, host.port) == (
        "ops",
        "cc-ci.example",
        2200,
    )
    hostile = ["grep", "-c", "x; rm -rf / #", "$(reboot)", "a'b"]
    argv = host.argv(hostile)
    assert argv[0] == "ssh" and argv[-2:-1] == ["ops@cc-ci.example"]
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/k" in argv
    assert shlex.split(argv[-1]) == hostile  # the remote shell sees the same words


def test_how_is_what_an_operator_pastes() -> None:
    host = host_for(_target("ssh://root@cc-ci", known_hosts="/k", identity_file="/i"))
    assert host.how("docker network inspect proxy") == (
        "ssh -i /i -o UserKnownHostsFile=/k root@cc-ci 'docker network inspect proxy'"
    )


def test_an_ssh_config_file_is_read_for_every_ssh_call(tmp_path: Path) -> None:
    conf = tmp_path / "ssh_config"
    conf.write_text("Host cc-ci\n  HostName 169.254.78.2\n")
    host = host_for(_target("ssh://cc-ci", config_file=str(conf)))
    assert isinstance(host, SshHost)
    argv = host.argv(["true"])
    assert argv[1:3] == ["-F", str(conf)]  # before any -o: ssh reads it first
    assert host.how("docker ps") == f"ssh -F {conf} cc-ci 'docker ps'"


def test_an_ssh_config_others_can_change_is_refused_as_root(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the rule is root's")
    conf = tmp_path / "ssh_config"
    conf.write_text("Host cc-ci\n  ProxyCommand touch /tmp/pwned\n")
    conf.chmod(0o666)
    config = write_config(tmp_path, lambda raw: raw["target"].update(
        docker_host="ssh://cc-ci", ssh={"config_file": str(conf)}))  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert exc.value.field == "target.ssh.config_file", exc.value
    conf.chmod(0o600)
    assert load_config(config).target.ssh.config_file == conf


@pytest.mark.faults
@pytest.mark.parametrize(
    "url",
    ["ssh://-oProxyCommand=touch%20x", "ssh://root@-p", "ssh://a b", "ssh://root@host:port"],
)
def test_ssh_urls_that_ssh_could_read_as_options_are_refused(tmp_path: Path, url: str) -> None:
    def target(raw: dict[str, Any]) -> None:
        raw["target"]["docker_host"] = url

    with pytest.raises(ConfigError, match=r"target\.docker_host"):
        load_config(write_config(tmp_path, target))


@pytest.mark.parametrize(
    ("stderr", "says"),
    [
        ("Host key verification failed.\r\n", "not in known_hosts"),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n", "CHANGED"),
        ("root@127.0.0.1: Permission denied (publickey).\n", "login refused"),
        ("ssh: connect to host 127.0.0.1 port 2: Connection refused\n", "connection refused"),
        ("", "ssh exited without a message"),
    ],
)
def test_ssh_failures_are_named(stderr: str, says: str) -> None:
    assert says in ssh_failure("root@h", 22, stderr)


def test_curl_from_the_host_keeps_host_name_and_ends_with_the_status() -> None:
    route = RouteConfig(
        name="d", url="https://drone.example/healthz", connect_to="127.0.0.1:443", verify_tls=False
    )
    argv = curl_argv(route, 5)
    assert argv[-2:] == ["--", "https://drone.example/healthz"]
    assert "drone.example:443:127.0.0.1:443" in argv and "-k" in argv
    assert argv[argv.index("-D") + 1] == "-" and argv[argv.index("-o") + 1] == "-"


def test_curl_output_is_read_for_its_status_and_a_bounded_body() -> None:
    from pvcheck.routes import parse_curl_output

    assert parse_curl_output(b"HTTP/1.1 303 See Other\r\nLocation: /x\r\n\r\n") == (303, b"")
    assert parse_curl_output(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2 200\r\nA: b\r\n\r\nhello") == (
        200,
        b"hello",
    )
    assert parse_curl_output(b"") == (None, b"")
    assert parse_curl_output(b"<html>not a head") == (None, b"")
