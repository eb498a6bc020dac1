"""The compose subset: what a recipe's compose file sets reaches swarm's service spec, and a
value or key outside the subset is refused with the file and key named before anything is
deployed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import main
from pvcheck.composefile import parse_stack, service_kwargs
from pvcheck.config import load_config
from pvcheck.errors import ConfigError
from tests.helpers import write_config


def one_service(**settings: Any) -> dict[str, Any]:
    return {"services": {"app": {"image": "web", **settings}}}


def task_and_service(doc: dict[str, Any]) -> dict[str, Any]:
    spec = parse_stack(doc, "c.yml")
    return service_kwargs("s_app", spec.services["app"], "web", {"default": "s_default"}, {}, {})


def test_a_recipes_deploy_settings_reach_the_service_spec() -> None:
    doc = one_service(
        deploy={
            "replicas": 2,
            "update_config": {"order": "start-first", "monitor": "2s"},
            "restart_policy": {"condition": "on-failure", "max_attempts": 3, "window": "1m30s"},
            "placement": {
                "constraints": ["node.role == manager"],
                "preferences": [{"spread": "node.labels.zone"}],
                "max_replicas_per_node": 2,
            },
            "resources": {"limits": {"cpus": "0.5", "memory": "64M"}},
        },
        stop_grace_period="500ms",
    )
    kwargs = task_and_service(doc)
    task = kwargs["task_template"]
    # Only what the file sets: swarm keeps its own default delay (5s), as stack deploy does.
    assert task["RestartPolicy"] == {
        "Condition": "on-failure",
        "MaxAttempts": 3,
        "Window": 90_000_000_000,
    }
    assert task["Placement"]["Constraints"] == ["node.role == manager"]
    assert task["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}
    ]
    assert task["Placement"]["MaxReplicas"] == 2
    assert task["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}}
    assert task["ContainerSpec"]["StopGracePeriod"] == 500_000_000
    assert kwargs["mode"] == {"replicated": {"Replicas": 2}}
    assert kwargs["update_config"]["Order"] == "start-first"
    assert kwargs["update_config"]["Monitor"] == 2_000_000_000
    assert kwargs["update_config"]["FailureAction"] == "pause"  # swarm's default


@pytest.mark.parametrize(
    ("port", "config"),
    [
        ("8080:80", {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}),
        ("53:53/udp", {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 53}),
        ("80", {"Protocol": "tcp", "TargetPort": 80}),  # the swarm picks the published port
        (
            {"target": 80, "published": 18080, "mode": "host"},
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 18080, "PublishMode": "host"},
        ),
    ],
)
def test_ports_read_as_compose_reads_them(port: Any, config: dict[str, Any]) -> None:
    (entry,) = task_and_service(one_service(ports=[port]))["endpoint_spec"]["Ports"]
    assert entry == {"PublishMode": "ingress", **config}


def test_nothing_set_sends_nothing() -> None:
    task = task_and_service(one_service())["task_template"]
    assert not {"RestartPolicy", "Placement", "Resources"} & set(task)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("deploy", "key", "message"),
    [
        ({"restart_policy": {"condition": "always"}}, "restart_policy.condition", "must be one of"),
        ({"restart_policy": {"delay": "soon"}}, "restart_policy.delay", "bad duration"),
        ({"restart_policy": {"max_attempts": -1}}, "restart_policy.max_attempts", ">= 0"),
        ({"restart_policy": {"backoff": 2}}, "restart_policy.backoff", "not supported"),
        ({"restart_policy": "on-failure"}, "restart_policy", "must be a mapping"),
        ({"placement": {"constraints": "node.role==manager"}}, "placement.constraints", "a list"),
        ({"placement": {"constraints": ["; rm -rf /"]}}, "placement.constraints", "a list"),
        ({"placement": {"preferences": [{"pack": "x"}]}}, "placement.preferences[0]", "spread"),
        ({"placement": {"max_replicas_per_node": 0}}, "placement.max_replicas_per_node", ">= 1"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory", "memory size"),
        ({"resources": {"limits": {"cpus": "-1"}}}, "resources.limits.cpus", "cpu count"),
        ({"resources": {"reservations": {"devices": []}}}, "reservations.devices", "not supported"),
        ({"resources": {"limits": {"pids": 10}}}, "resources.limits.pids", "not supported"),
        ({"update_config": {"failure_action": "explode"}}, "failure_action", "must be one of"),
        ({"update_config": {"max_failure_ratio": 2}}, "max_failure_ratio", "from 0 to 1"),
        ({"replicas": "two"}, "deploy.replicas", "whole number"),
        ({"replicas": True}, "deploy.replicas", "whole number"),
        ({"mode": "global", "replicas": 2}, "deploy.replicas", "global"),
        ({"mode": "everywhere"}, "deploy.mode", "must be one of"),
        ({"endpoint_mode": "dnsrr"}, "deploy.endpoint_mode", "not supported"),
    ],
)
def test_a_bad_deploy_value_names_the_file_and_key(
    deploy: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_stack(one_service(deploy=deploy), "recipes/x/compose.yml")
    assert str(err.value).startswith("recipes/x/compose.yml: services.app.")
    assert key in str(err.value)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"ports": ["127.0.0.1:80:80"]}, "services.app.ports[0]"),
        ({"ports": ["80/sctp"]}, "services.app.ports[0]"),
        ({"ports": [{"target": 0}]}, "services.app.ports[0].target"),
        ({"ports": [{"target": 80, "mode": "bridge"}]}, "services.app.ports[0].mode"),
        ({"ports": "80:80"}, "services.app.ports"),
        ({"stop_grace_period": "1 minute"}, "services.app.stop_grace_period"),
        ({"build": "."}, "services.app.build"),
        ({"labels": 5}, "services.app.labels"),
        ({"environment": {"A": {"nested": 1}}}, "services.app.environment"),
        ({"command": [{"a": 1}]}, "services.app.command"),
        ({"entrypoint": "sh -c 'unclosed"}, "services.app.entrypoint"),
        ({"networks": "proxy"}, "services.app.networks"),
        ({"networks": ["../etc"]}, "services.app.networks"),
        ({"networks": {"proxy": {"aliases": ["a"]}}}, "services.app.networks.proxy.aliases"),
        ({"volumes": ["data"]}, "services.app.volumes[0]"),
        ({"volumes": ["data:/d:z"]}, "services.app.volumes[0]"),
        ({"hostname": "a b"}, "services.app.hostname"),
        ({"stop_signal": ["KILL"]}, "services.app.stop_signal"),
        ({"image": ["web"]}, "services.app.image"),
    ],
)
def test_a_bad_service_value_names_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^c\.yml: {re.escape(key)}: "):
        parse_stack(one_service(**settings), "c.yml")


@pytest.mark.faults
@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"configs": {"c": {"file": "x"}}}, "configs"),
        ({"secrets": {}}, "secrets"),
        ({"networks": {"proxy": {"driver": "overlay"}}}, "networks.proxy.driver"),
        ({"networks": {"proxy": {"external": "yes"}}}, "networks.proxy.external"),
        ({"networks": ["proxy"]}, "networks"),
        ({"volumes": {"data": {"driver": "nfs"}}}, "volumes.data.driver"),
        ({"networks": {"backend": {"name": "other"}}}, "networks.backend.name"),
        ({"services": {"../app": {"image": "web"}}}, "services.../app"),
        ({"services": {"app": {"image": "web", 5: "x"}}}, "services.app.5"),
    ],
)
def test_a_bad_top_level_value_names_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^c\.yml: {re.escape(key)}: "):
        parse_stack({**one_service(), **doc}, "c.yml")


def test_service_settings_reach_the_container_spec() -> None:
    doc = one_service(
        command="httpd -f -p 80",
        entrypoint=["/bin/sh", "-c"],
        environment=["A=1", "B=x=y"],
        labels={"team": "ci", "n": 3},
        networks={"proxy": None},
        volumes=["data:/data:ro", "/srv/www:/www"],
        hostname="web-1",
        stop_signal="SIGINT",
        deploy={"labels": ["traefik.enable=true"]},
    )
    doc["networks"] = {"proxy": {"external": True, "name": "shared-proxy"}}
    doc["volumes"] = {"data": None}
    spec = parse_stack(doc, "c.yml")
    assert spec.networks["proxy"].external and spec.networks["proxy"].name == "shared-proxy"
    assert spec.volumes == ["data"]
    kwargs = service_kwargs(
        "s_app", spec.services["app"], "web", {"proxy": "shared-proxy"}, {"data": "s_data"}, {}
    )
    container = kwargs["task_template"]["ContainerSpec"]
    assert container["Command"] == ["/bin/sh", "-c"]
    assert container["Args"] == ["httpd", "-f", "-p", "80"]
    assert container["Env"] == ["A=1", "B=x=y"]
    assert container["Labels"] == {"team": "ci", "n": "3"}
    assert container["Hostname"] == "web-1" and container["StopSignal"] == "SIGINT"
    assert [(m["Source"], m["Target"], m["Type"], m["ReadOnly"]) for m in container["Mounts"]] == [
        ("s_data", "/data", "volume", True),
        ("/srv/www", "/www", "bind", False),
    ]
    assert kwargs["task_template"]["Networks"] == [{"Target": "shared-proxy"}]
    assert kwargs["labels"] == {"traefik.enable": "true"}


@pytest.mark.parametrize(
    ("text", "nanos"),
    [("2s", 2_000_000_000), ("1m30s", 90_000_000_000), ("250ms", 250_000_000), (3, 3_000_000_000)],
)
def test_durations_read_as_docker_reads_them(text: Any, nanos: int) -> None:
    spec = parse_stack(one_service(stop_grace_period=text), "c.yml")
    assert spec.services["app"].stop_grace_period_ns == nanos


@pytest.mark.parametrize(
    ("text", "size"), [("64M", 64 << 20), ("1.5g", 3 << 29), ("100kb", 102_400), (4096, 4096)]
)
def test_memory_sizes_read_as_docker_reads_them(text: Any, size: int) -> None:
    doc = one_service(deploy={"resources": {"reservations": {"memory": text}}})
    assert task_and_service(doc)["task_template"]["Resources"] == {
        "Reservations": {"MemoryBytes": size}
    }


compose_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)
service_keys = st.sampled_from(
    [
        *("command", "entrypoint", "environment", "labels", "networks", "ports", "volumes"),
        *("hostname", "stop_signal", "stop_grace_period", "deploy"),
    ]
)
deploy_keys = st.sampled_from(
    ["replicas", "mode", "restart_policy", "placement", "resources", "update_config", "labels"]
)


def convert_or_refuse_by_name(doc: dict[str, Any]) -> None:
    try:
        spec = parse_stack(doc, "c.yml")
    except ConfigError as exc:
        assert str(exc).startswith("c.yml: services.app.")
    else:
        app = spec.services["app"]
        kwargs = service_kwargs("s_app", app, "web", {n: n for n in app.networks}, {}, {})
        assert kwargs["name"] == "s_app"


# One key at a time as well as together, so that an early refusal does not hide a later key.
@pytest.mark.faults
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service_keys, compose_values)
def test_any_one_service_value_is_converted_or_refused_by_name(key: str, value: Any) -> None:
    convert_or_refuse_by_name(one_service(**{key: value}))


@pytest.mark.faults
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deploy_keys, compose_values)
def test_any_one_deploy_value_is_converted_or_refused_by_name(key: str, value: Any) -> None:
    convert_or_refuse_by_name(one_service(deploy={key: value}))


@pytest.mark.faults
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(service_keys, compose_values, max_size=4))
def test_any_service_is_converted_or_refused_by_name(settings: dict[str, Any]) -> None:
    convert_or_refuse_by_name(one_service(**settings))


@pytest.mark.faults
def test_a_bad_compose_file_stops_the_config_with_its_own_name(tmp_path: Path) -> None:
    """The recipe's compose files are read with the config, so `pvcheck run` refuses (exit 2)
    before anything is deployed, naming the compose file and key."""
    upgrade = tmp_path / "compose.upgrade.yml"
    upgrade.write_text(
        "services:\n  app:\n    image: web\n    deploy:\n      restart_policy: {condition: always}\n"
    )

    def bad_upgrade(raw: dict[str, Any]) -> None:
        raw["deploy"]["compose"]["upgrade_file"] = str(upgrade)

    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, bad_upgrade))
    assert str(err.value).startswith(
        f"{upgrade}: services.app.deploy.restart_policy.condition: must be one of"
    )
    assert main(["config", "check", str(tmp_path / "pvcheck.toml")]) == 2
