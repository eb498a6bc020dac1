"""What a recipe may reach when pvcheck (root on a shared swarm host) deploys it: only the
compose keys Co-op Cloud recipes use, no driver options, no log shipping, no published port
it was not given, files read from inside its folder without following a link anywhere; and
the compose file's duplicate-key check done in one pass."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcheck.compose import (
    Confinement,
    confine,
    load_compose,
    never_published,
    prepare,
    read_env_file,
)
from pvcheck.compose.yamlio import _ComposeLoader
from pvcheck.errors import ConfigError

LAB = Path(__file__).parents[2] / "lab"
STACK = "pvc-notes-abc123"
RUN = {"pvcheck.run": "run-42"}


def _confinement(tmp_path: Path, publish: frozenset[int] = frozenset()) -> Confinement:
    recipe = tmp_path / "recipe"
    recipe.mkdir(exist_ok=True)
    files_to = tmp_path / "private"
    files_to.mkdir(exist_ok=True)
    return Confinement(STACK, recipe, files_to, "proxy", publish)


def _app(**service: Any) -> dict[str, Any]:
    return {"services": {"app": {"image": "nginx", **service}}}


def _with(doc: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**doc, **top}


def _refused(doc: dict[str, Any], c: Confinement, field: str) -> ConfigError:
    with pytest.raises(ConfigError, match=rf"^compose\.yml: {re.escape(field)}: .*refused$") as e:
        confine(doc, c, where="compose.yml")
    return e.value


HOST_ROOT = {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": "/"}}


# --- finding 2 and 9: every object kind a recipe declares ----------------------------------
@pytest.mark.faults
@pytest.mark.parametrize(
    ("doc", "field"),
    [
        # The host's / through a local volume the stack creates, mounted at /host.
        (
            _with(_app(volumes=["host:/host"]), volumes={"host": HOST_ROOT}),
            "volumes.host.driver_opts",
        ),
        # A volume plugin can mount whatever it likes.
        (_with(_app(), volumes={"v": {"driver": "rclone"}}), "volumes.v.driver"),
        # Networks on the node's own interfaces.
        (_with(_app(), networks={"lan": {"driver": "macvlan"}}), "networks.lan.driver"),
        (_with(_app(), networks={"h": {"driver": "host"}}), "networks.h.driver"),
        (_with(_app(), networks={"b": {"driver": "bridge"}}), "networks.b.driver"),
        (
            _with(_app(), networks={"n": {"driver_opts": {"parent": "eth0"}}}),
            "networks.n.driver_opts",
        ),
        (
            _with(_app(), networks={"n": {"ipam": {"config": [{"subnet": "10.0.0.0/8"}]}}}),
            "networks.n.ipam",
        ),
        # An alias on the shared network answers for another app's service name.
        (
            _with(
                _app(networks={"proxy": {"aliases": ["traefik"]}}),
                networks={"proxy": {"external": True}},
            ),
            "services.app.networks.proxy.aliases",
        ),
        (
            _app(networks={"internal": {"ipv4_address": "10.0.0.2"}}),
            "services.app.networks.internal.ipv4_address",
        ),
        # Published ports: host mode, one the deploy was not given, one swarm would choose.
        (
            _app(ports=[{"target": 80, "published": 8080, "mode": "host"}]),
            "services.app.ports[0].mode",
        ),
        (_app(ports=["4200:80"]), "services.app.ports[0]"),
        (_app(ports=["127.0.0.1:8080:80/tcp"]), "services.app.ports[0]"),
        (_app(ports=[{"target": 80, "published": "8000-8010"}]), "services.app.ports[0]"),
        (_app(ports=[80]), "services.app.ports[0]"),
        (_app(ports=["80/udp"]), "services.app.ports[0]"),
        # Logs sent to an address the recipe names.
        (
            _app(logging={"driver": "syslog", "options": {"syslog-address": "udp://x:514"}}),
            "services.app.logging.options.syslog-address",
        ),
        (_app(logging={"driver": "gelf"}), "services.app.logging.driver"),
        (
            _app(logging={"options": {"fluentd-address": "x:24224"}}),
            "services.app.logging.options.fluentd-address",
        ),
        # Host-level service keys.
        (_app(privileged=True), "services.app.privileged"),
        (_app(cap_add=["SYS_ADMIN"]), "services.app.cap_add"),
        (_app(devices=["/dev/sda:/dev/sda"]), "services.app.devices"),
        (_app(sysctls={"net.ipv4.ip_forward": 1}), "services.app.sysctls"),
        (_app(ulimits={"nproc": 65535}), "services.app.ulimits"),
        (_app(pid="host"), "services.app.pid"),
        (_app(ipc="host"), "services.app.ipc"),
        (_app(network_mode="host"), "services.app.network_mode"),
        (_app(userns_mode="host"), "services.app.userns_mode"),
        (_app(security_opt=["apparmor=unconfined"]), "services.app.security_opt"),
        (_app(cgroup_parent="/system.slice"), "services.app.cgroup_parent"),
        (_app(volumes_from=["other"]), "services.app.volumes_from"),
        # Keys outside the allow-list, at every level.
        (_app(extends={"file": "/etc/x.yml", "service": "s"}), "services.app.extends"),
        (_app(oom_kill_disable=True), "services.app.oom_kill_disable"),
        (
            _app(deploy={"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}}),
            "services.app.deploy.resources.reservations.devices",
        ),
        (_app(healthcheck={"test": ["NONE"], "exec": "x"}), "services.app.healthcheck.exec"),
        ({**_app(), "include": ["/etc/other.yml"]}, "include"),
        # Mounts other than named volumes and tmpfs.
        (
            _app(volumes=[{"type": "npipe", "source": "x", "target": "/x"}]),
            "services.app.volumes[0].type",
        ),
        (
            _app(volumes=[{"source": "/var/run/docker.sock", "target": "/s"}]),
            "services.app.volumes[0].type",
        ),
        (
            _app(volumes=[{"type": "volume", "source": "v", "target": "/x", "bind": {}}]),
            "services.app.volumes[0].bind",
        ),
        # A config from the CLI's environment (pvcheck's own), secret drivers.
        (_with(_app(), configs={"c": {"environment": "DRONE_TOKEN"}}), "configs.c.environment"),
        (_with(_app(), secrets={"s": {"driver": "vault"}}), "secrets.s.driver"),
    ],
)
def test_a_recipe_key_that_reaches_the_host_is_refused_naming_it(
    tmp_path: Path, doc: dict[str, Any], field: str
) -> None:
    _refused(doc, _confinement(tmp_path), field)


def test_a_port_of_the_hosts_own_services_can_never_be_given_to_a_recipe(tmp_path: Path) -> None:
    for port in (22, 80, 443, 2375, 2377, 4200, 4789, 7946, 0, 70000):
        assert never_published(port), port
        with pytest.raises(ValueError, match="host's own services"):
            _confinement(tmp_path, frozenset({port, 8080}))
    c = _confinement(tmp_path, frozenset({8080}))
    given = _app(
        ports=["8080:80", "0.0.0.0:8080:80/tcp", {"target": 80, "published": 8080}],
    )
    assert confine(given, c) == given
    _refused(_app(ports=["8081:80"]), c, "services.app.ports[0]")
    host_mode = _app(ports=[{"target": 80, "published": 8080, "mode": "host"}])
    _refused(host_mode, c, "services.app.ports[0].mode")


def test_what_recipes_write_passes_unchanged(tmp_path: Path) -> None:
    cache = {"type": "volume", "source": "cache", "target": "/c", "volume": {"nocopy": True}}
    doc: dict[str, Any] = {
        "version": "3.8",
        "x-defaults": {"anything": True},
        "services": {
            "app": {
                "image": "nginx",
                "x-note": "inert",
                "logging": {"driver": "json-file", "options": {"max-size": "10m"}},
                "networks": {"proxy": None, "internal": {"aliases": ["web"]}},
                "volumes": [
                    "content:/srv",
                    cache,
                    {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 1000}},
                ],
                "depends_on": ["db"],
                "cap_drop": ["ALL"],
                "read_only": True,
                "deploy": {
                    "mode": "replicated",
                    "replicas": 1,
                    "resources": {"limits": {"memory": "512M"}},
                    "placement": {"constraints": ["node.role == manager"]},
                    "restart_policy": {"condition": "on-failure", "max_attempts": 3},
                },
            },
            "db": {"image": "postgres", "logging": {"options": {"max-file": "3"}}},
        },
        "networks": {"proxy": {"external": True}, "internal": {"driver": "overlay"}},
        "volumes": {"content": None, "cache": {"driver": "local", "labels": {"a": "b"}}},
    }
    assert confine(doc, _confinement(tmp_path), where="compose.yml") == {
        **doc,
        "volumes": {"content": {}, "cache": doc["volumes"]["cache"]},
    }


@pytest.mark.parametrize(
    ("compose", "env_file", "env"),
    [
        (LAB / "recipes/notes/compose.yml", LAB / "recipes/notes/.env.sample", {}),
        (
            LAB / "cc-ci-twin/recipes/custom-html/compose.yml",
            None,
            {"IMAGE": "busybox:1.36", "VERSION": "2.0.0"},
        ),
    ],
)
def test_the_lab_recipes_still_deploy_confined(
    tmp_path: Path, compose: Path, env_file: Path | None, env: dict[str, str]
) -> None:
    files_to = tmp_path / "private"
    files_to.mkdir()
    c = Confinement(STACK, compose.parent, files_to, "proxy")
    app_env = {**(read_env_file(env_file) if env_file else {}), **env}
    app_env |= {"STACK_NAME": STACK, "DOMAIN": "notes.lab.test"}
    text, _ = prepare(compose, app_env, RUN, confinement=c)
    assert yaml.safe_load(text)["services"]["app"]["deploy"]["labels"]["pvcheck.run"] == "run-42"


# --- finding 3: files are read through no link, in any component ----------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the recipe holding a file the recipe must never reach."""
    folder = tmp_path / "etc"
    (folder / "deep").mkdir(parents=True)
    (folder / "shadow").write_text("root:$6$secret\n")
    (folder / "deep" / "shadow").write_text("root:$6$secret\n")
    return folder


@pytest.mark.faults
@pytest.mark.parametrize(
    ("link", "target", "path"),
    [
        ("sub", "etc", "sub/shadow"),  # the folder is a link: `recipe/sub -> /etc`
        ("a/b", "etc", "a/b/deep/shadow"),  # a link in the middle of the path
        ("a/b", "../../etc", "a/b/shadow"),  # a relative link climbing out
        ("top", "etc/shadow", "top"),  # the file itself
    ],
)
def test_a_recipe_file_reached_through_a_link_anywhere_is_refused_unread(
    tmp_path: Path, outside: Path, link: str, target: str, path: str
) -> None:
    c = _confinement(tmp_path)
    made = c.recipe_dir / link
    made.parent.mkdir(parents=True, exist_ok=True)
    made.symlink_to(target if target.startswith("..") else tmp_path / target)
    assert (c.recipe_dir / path).read_text() == "root:$6$secret\n"  # the attack's reach
    for doc, field in [
        (_with(_app(), secrets={"x": {"file": path}}), "secrets.x.file"),
        (_with(_app(), configs={"x": {"file": path}}), "configs.x.file"),
        (_app(env_file=[path]), "services.app.env_file"),
    ]:
        error = _refused(doc, c, field)
        assert "symbolic link" in error.problem
    assert list(c.files_to.iterdir()) == []


@pytest.mark.faults
def test_a_recipe_file_that_is_a_fifo_a_folder_or_a_hard_link_is_refused(
    tmp_path: Path, outside: Path
) -> None:
    c = _confinement(tmp_path)
    os.mkfifo(c.recipe_dir / "pipe")  # opened non-blocking: never hangs the run
    (c.recipe_dir / "folder").mkdir()
    os.link(outside / "shadow", c.recipe_dir / "linked")
    for name, problem in [
        ("pipe", "not a regular file"),
        ("folder", "not a regular file"),
        ("linked", "other hard links"),
        ("../etc/shadow", "outside the recipe folder"),
    ]:
        error = _refused(_with(_app(), secrets={"x": {"file": name}}), c, "secrets.x.file")
        assert problem in error.problem, name
    with pytest.raises(ConfigError, match=r"absent not found$"):
        confine(_with(_app(), secrets={"x": {"file": "absent/file"}}), c)
    assert list(c.files_to.iterdir()) == []


def test_a_file_in_a_real_subfolder_is_copied_privately(tmp_path: Path) -> None:
    c = _confinement(tmp_path)
    (c.recipe_dir / "conf" / "nginx").mkdir(parents=True)
    (c.recipe_dir / "conf" / "nginx" / "site.conf").write_text("server {}\n")
    out = confine(_with(_app(), configs={"c": {"file": "./conf/nginx/site.conf"}}), c)
    copy = Path(out["configs"]["c"]["file"])
    assert copy.parent == c.files_to and copy.read_text() == "server {}\n"
    assert copy.name.endswith("site.conf")


# --- finding 8: the duplicate-key check in one pass -----------------------------------------
def test_a_key_given_twice_is_refused_at_any_depth_and_a_merge_may_override(
    tmp_path: Path,
) -> None:
    path = tmp_path / "compose.yml"
    for text, key in [
        ("services:\n  app: {image: x}\nservices: {}\n", "services"),
        ("services:\n  app:\n    image: x\n    deploy: {replicas: 1, replicas: 2}\n", "replicas"),
        ("x-b: &b {image: x}\nservices:\n  app:\n    <<: *b\n    user: a\n    user: b\n", "user"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"key '{key}' given twice"):
            load_compose(path)
    # A merged mapping's key may be overridden by the mapping's own (YAML merge keys).
    path.write_text(
        "x-base: &b {image: x, stop_signal: KILL}\nservices:\n  app:\n    <<: *b\n    image: y\n"
    )
    assert load_compose(path)["services"]["app"] == {"image": "y", "stop_signal": "KILL"}


def test_the_duplicate_key_check_compares_each_key_once_not_each_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Counted, not timed: keys that count their comparisons. A pairwise check (the old
    # list.count) compares about n*n times; a set compares only on a hash collision.
    compared = 0

    class Key(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

    n = 2000
    loader = _ComposeLoader("\n".join(f"k{i}: {i}" for i in range(n)))
    try:
        node = loader.get_single_node()
        assert isinstance(node, yaml.MappingNode)
        construct = loader.construct_object

        def counting(item: yaml.Node, deep: bool = False) -> Any:
            value = construct(item, deep=deep)
            return Key(value) if isinstance(value, str) else value

        monkeypatch.setattr(loader, "construct_object", counting)
        assert len(loader.construct_mapping(node)) == n
    finally:
        loader.dispose()
    assert compared < n


# --- the attacker's second read ---------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.parametrize(
    ("mounts", "field"),
    [
        # A Windows drive is a path to the CLI: `c:../..` resolves against its working folder
        # to the host's /.
        (["c:../../../../../../..:/host"], "services.app.volumes[0]"),
        # A volume name the stack does not declare is not ours to trust either.
        (["undeclared:/data"], "services.app.volumes[0]"),
        (
            [{"type": "volume", "source": "undeclared", "target": "/data"}],
            "services.app.volumes[0].source",
        ),
    ],
)
def test_a_mount_source_must_be_a_volume_the_stack_declares(
    tmp_path: Path, mounts: list[Any], field: str
) -> None:
    doc = _with(_app(volumes=mounts), volumes={"content": {}})
    _refused(doc, _confinement(tmp_path), field)
    ok = _with(_app(volumes=["content:/srv:ro"]), volumes={"content": {}})
    assert confine(ok, _confinement(tmp_path))["services"]["app"]["volumes"] == ["content:/srv:ro"]


@pytest.mark.faults
@pytest.mark.parametrize("name", ["host", "otherapp_internal"])
def test_the_old_external_spelling_names_the_network_it_joins(tmp_path: Path, name: str) -> None:
    # `external: {name: host}` joins the host's network namespace (the CLI lets `host` in).
    doc = _with(_app(networks=["proxy"]), networks={"proxy": {"external": {"name": name}}})
    _refused(doc, _confinement(tmp_path), "networks.proxy")
    shared = _with(_app(networks=["proxy"]), networks={"proxy": {"external": {"name": "proxy"}}})
    assert confine(shared, _confinement(tmp_path))
    both = {"proxy": {"external": {"name": "host"}, "name": "proxy"}}
    _refused(
        _with(_app(networks=["proxy"]), networks=both),
        _confinement(tmp_path),
        "networks.proxy.external.name",
    )


@pytest.mark.faults
@pytest.mark.skipif(os.geteuid() != 0, reason="the rule applies to root")
def test_a_recipe_folder_others_can_swap_is_refused(tmp_path: Path) -> None:
    """The compose file is read by path before the recipe's other files: a folder another user
    controls could be flipped to /etc between the two reads."""
    user = tmp_path / "user"
    user.mkdir()
    os.chown(user, 65534, 65534)
    c = _confinement(user)
    error = _refused(_app(), c, "recipe folder")
    assert "owned by uid 65534" in str(error)
