"""Preparing a recipe's compose file for `docker stack deploy`: the app's env file is read,
every value is interpolated as compose does (and left with nothing for the CLI to
interpolate again), pvcheck's labels reach every object the stack creates, and relative
paths keep pointing at the recipe folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pvcheck.compose import (
    MAX_ENV_BYTES,
    Confinement,
    Reference,
    absolutize_files,
    confine,
    dump_compose,
    escape_dollars,
    inject_labels,
    interpolate,
    load_compose,
    normalise_labels,
    parse_env,
    prepare,
    read_env_file,
    references,
    resolve_environment,
    unset_variables,
)
from pvcheck.errors import ConfigError

TWIN_RECIPE = Path(__file__).parents[2] / "lab/cc-ci-twin/recipes/custom-html/compose.yml"

# Shaped like a Co-op Cloud recipe (nginx in front of a database).
RECIPE = """\
version: "3.8"
services:
  app:
    image: nginx:${NGINX_VERSION:-1.25}
    environment:
      - DOMAIN
      - DB_HOST=${STACK_NAME}_db
      - DB_PASSWORD_FILE=/run/secrets/db_password
    env_file: .env.app
    networks: [proxy, internal]
    volumes:
      - content:/usr/share/nginx/html
      - ./static:/srv/static:ro
    configs:
      - source: nginx_config
        target: /etc/nginx/nginx.conf
    secrets: [db_password]
    healthcheck:
      test: ["CMD-SHELL", "curl -fs http://localhost/ || exit 1"]
      interval: 30s
      retries: 10
    deploy:
      replicas: ${REPLICAS:-1}
      update_config:
        order: start-first
        failure_action: rollback
      labels:
        - "traefik.enable=true"
        - "traefik.http.services.${STACK_NAME}.loadbalancer.server.port=80"
        - "traefik.http.routers.${STACK_NAME}.rule=Host(`${DOMAIN}`)"
        - "traefik.http.routers.${STACK_NAME}.entrypoints=web-secure"
        - "coop-cloud.${STACK_NAME}.version=1.2.0+1.25"
        - "backupbot.backup=${ENABLE_BACKUPS:-true}"
  db:
    image: postgres:15
    command: ["sh", "-c", "echo $$HOSTNAME && exec postgres"]
    environment:
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
    networks: [internal]
    volumes: [postgres:/var/lib/postgresql/data]
    secrets: [db_password]
    deploy:
      labels:
        backupbot.backup: "true"
configs:
  nginx_config:
    name: "${STACK_NAME}_nginx_config_${NGINX_CONFIG_VERSION}"
    file: nginx.conf.tmpl
    template_driver: golang
secrets:
  db_password:
    external: true
    name: "${STACK_NAME}_db_password_${SECRET_DB_PASSWORD_VERSION}"
networks:
  proxy:
    external: true
  internal: {}
volumes:
  content:
  postgres:
"""

APP_ENV = {
    "STACK_NAME": "web_example_org",
    "DOMAIN": "web.example.org",
    "NGINX_CONFIG_VERSION": "v1",
    "SECRET_DB_PASSWORD_VERSION": "v1",
}
RUN = {"pvcheck.run": "run-42", "pvcheck.managed": "true"}


def recipe() -> dict[str, Any]:
    doc = yaml.safe_load(RECIPE)
    assert isinstance(doc, dict)
    return doc


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- env files -----------------------------------------------------------------------------


def test_an_abra_env_file_is_read_with_quotes_comments_and_exports(tmp_path: Path) -> None:
    env_file = write(
        tmp_path / "web.example.org.env",
        """\
# Co-op Cloud app env (as `abra app new` writes it)
TYPE=custom-html
DOMAIN=web.example.org

## Domain aliases
#EXTRA_DOMAINS=', `www.web.example.org`'
export LETS_ENCRYPT_ENV=production
COMPOSE_FILE="compose.yml:compose.smtp.yml"   # two files
SECRET_DB_PASSWORD_VERSION=v1 # bump to rotate
COLOR=#fff
PASSWORD='pa$word # not a comment'
GREETING="say \\"hi\\" to ${DOMAIN}"
URL=https://$DOMAIN/x
PRICE=\\$5
EMPTY=
SPACED = padded value
TYPE=custom-html-tiny
""",
    )
    assert read_env_file(env_file) == {
        "TYPE": "custom-html-tiny",  # a later line wins
        "DOMAIN": "web.example.org",
        "LETS_ENCRYPT_ENV": "production",
        "COMPOSE_FILE": "compose.yml:compose.smtp.yml",
        "SECRET_DB_PASSWORD_VERSION": "v1",
        "COLOR": "#fff",
        "PASSWORD": "pa$word # not a comment",
        "GREETING": 'say "hi" to web.example.org',
        "URL": "https://web.example.org/x",
        "PRICE": "$5",
        "EMPTY": "",
        "SPACED": "padded value",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("DOMAIN web.example.org", "KEY=VALUE"),
        ("1DOMAIN=x", "KEY=VALUE"),
        ("=x", "KEY=VALUE"),
        ("PASSWORD='unterminated", "closing single quote"),
        ('GREETING="unterminated', "closing double quote"),
        ("GREETING='hi' there", "after the closing quote"),
        ("URL=https://$UNSET_NAME/", "UNSET_NAME"),
        ('URL="${DOMAIN"', "${ must be followed"),
    ],
)
def test_a_malformed_env_line_names_the_file_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    env_file = write(tmp_path / "app.env", f"# header\nDOMAIN=web.example.org\n\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        read_env_file(env_file)
    assert (caught.value.path, caught.value.field) == (str(env_file), "line 4")
    assert problem in caught.value.problem


def test_env_text_with_crlf_lines_and_references_only_to_earlier_lines() -> None:
    assert parse_env("export\tDOMAIN=a.org\r\nURL=https://${DOMAIN}\r\n", "app.env") == {
        "DOMAIN": "a.org",
        "URL": "https://a.org",
    }
    with pytest.raises(ConfigError, match="URL: \\$DOMAIN is not set on an earlier line") as caught:
        parse_env("URL=https://$DOMAIN\nDOMAIN=a.org\n", "app.env")
    assert (caught.value.path, caught.value.field) == ("app.env", "line 1")


def test_a_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as caught:
        read_env_file(tmp_path / "absent.env")
    assert caught.value.path == str(tmp_path / "absent.env")


def test_an_env_file_that_is_a_link_a_fifo_or_huge_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "real.env", "DOMAIN=x\n")
    (tmp_path / "link.env").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.env")
    write(tmp_path / "huge.env", "A=" + "x" * MAX_ENV_BYTES + "\n")
    for name, problem in [("link", "symbolic link"), ("fifo", "FIFO"), ("huge", "too large")]:
        with pytest.raises(ConfigError, match=problem) as caught:
            read_env_file(tmp_path / f"{name}.env")
        assert caught.value.path == str(tmp_path / f"{name}.env")


# --- variable references -------------------------------------------------------------------


def test_the_references_of_a_recipe_and_which_are_required() -> None:
    assert references(recipe()) == {
        Reference("NGINX_VERSION", required=False),
        Reference("REPLICAS", required=False),
        Reference("ENABLE_BACKUPS", required=False),
        Reference("STACK_NAME", required=True),
        Reference("DOMAIN", required=True),
        Reference("NGINX_CONFIG_VERSION", required=True),
        Reference("SECRET_DB_PASSWORD_VERSION", required=True),
    }  # not HOSTNAME: `$$HOSTNAME` is a literal for the container's shell


@pytest.mark.parametrize(
    ("value", "required", "optional"),
    [
        ("$VAR and ${OTHER}", {"VAR", "OTHER"}, set()),
        ("${VAR:-x} ${VAR2-x} ${VAR3:+x} ${VAR4+x}", set(), {"VAR", "VAR2", "VAR3", "VAR4"}),
        ("${VAR:?set it} ${VAR2?set it}", {"VAR", "VAR2"}, set()),
        ("$$VAR $${VAR2} $$$VAR3", {"VAR3"}, set()),
        ("${VAR:-${FALLBACK}}", set(), {"VAR", "FALLBACK"}),
        ("cost: $5, ${VAR}", {"VAR"}, set()),
    ],
)
def test_references_follow_compose_syntax(
    value: str, required: set[str], optional: set[str]
) -> None:
    doc = {"services": {"app": {"image": value}}}
    assert {ref.name for ref in references(doc) if ref.required} == required
    assert {ref.name for ref in references(doc)} == required | optional


def test_keys_are_not_interpolated_so_hold_no_references() -> None:
    doc = {"services": {"app": {"labels": {"traefik.http.routers.${KEY_VAR}.tls": "${VALUE}"}}}}
    assert references(doc) == {Reference("VALUE", required=True)}


def test_unset_variables_names_each_required_variable_the_env_lacks() -> None:
    env = {k: v for k, v in APP_ENV.items() if k not in ("DOMAIN", "NGINX_CONFIG_VERSION")}
    assert unset_variables(recipe(), env) == ["DOMAIN", "NGINX_CONFIG_VERSION"]
    assert unset_variables(recipe(), APP_ENV) == []


@pytest.mark.parametrize(
    ("value", "env", "unset"),
    [
        ("${VAR:-default}", {}, []),
        ("${VAR-default} ${VAR:+alt} ${VAR+alt}", {}, []),
        ("${VAR:?give the domain}", {"VAR": ""}, ["VAR"]),  # :? also refuses empty
        ("${VAR?give the domain}", {"VAR": ""}, []),
        ("${VAR:-${FALLBACK}}", {"VAR": "set"}, []),  # the default is not used
        ("${VAR:-${FALLBACK}}", {}, ["FALLBACK"]),
        ("${VAR:+${ALT}}", {"VAR": "set"}, ["ALT"]),
        ("$ZED ${ALPHA}", {}, ["ALPHA", "ZED"]),
    ],
)
def test_unset_variables_reports_only_what_interpolation_would_miss(
    value: str, env: dict[str, str], unset: list[str]
) -> None:
    assert unset_variables({"services": {"app": {"image": value}}}, env) == unset


# --- interpolation -------------------------------------------------------------------------


def interpolated(value: str, env: dict[str, str], escape: bool = False) -> Any:
    doc = interpolate({"services": {"app": {"image": value}}}, env, "compose.yml", escape=escape)
    return doc["services"]["app"]["image"]


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("nginx:${NGINX_VERSION:-1.25}", {}, "nginx:1.25"),
        ("nginx:${NGINX_VERSION:-1.25}", {"NGINX_VERSION": ""}, "nginx:1.25"),
        ("nginx:${NGINX_VERSION:-1.25}", {"NGINX_VERSION": "1.27"}, "nginx:1.27"),
        ("nginx:${NGINX_VERSION-1.25}", {}, "nginx:1.25"),
        ("nginx:${NGINX_VERSION-1.25}", {"NGINX_VERSION": ""}, "nginx:"),
        ("[${EXTRA:+,www.$DOMAIN}]", {"EXTRA": "1", "DOMAIN": "a.org"}, "[,www.a.org]"),
        ("[${EXTRA:+,www}]", {"EXTRA": ""}, "[]"),
        ("[${EXTRA+,www}]", {"EXTRA": ""}, "[,www]"),
        ("[${EXTRA+,www}]", {}, "[]"),
        ("${DOMAIN:?set DOMAIN}", {"DOMAIN": "a.org"}, "a.org"),
        ("${DOMAIN?set DOMAIN}", {"DOMAIN": ""}, ""),
        ("${STACK_NAME}_db_$SUFFIX", {"STACK_NAME": "s", "SUFFIX": "1"}, "s_db_1"),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("Host(`${DOMAIN}`)", {"DOMAIN": "a.org"}, "Host(`a.org`)"),
        ("echo $$HOME", {"HOME": "/root"}, "echo $HOME"),
        ("costs $5 $", {}, "costs $5 $"),  # a `$` before no name is kept (compose spec)
        ("${VAR:-a}b}", {}, "ab}"),  # the default ends at the first `}` not of a nested ${
    ],
)
def test_interpolation_follows_each_compose_operator(
    value: str, env: dict[str, str], expected: str
) -> None:
    assert interpolated(value, env) == expected


@pytest.mark.parametrize(
    ("value", "env", "problem"),
    [
        (
            "${DOMAIN:?set DOMAIN in the app env}",
            {},
            "DOMAIN is missing a value: set DOMAIN in the app env",
        ),
        (
            "${DOMAIN:?set DOMAIN in the app env}",
            {"DOMAIN": ""},
            "DOMAIN is missing a value: set DOMAIN",
        ),
        ("${DOMAIN?need one}", {}, "DOMAIN is missing a value: need one"),
        ("web-${DOMAIN}", {}, "variable DOMAIN is not set in the env"),
        ("web-$DOMAIN", {}, "variable DOMAIN is not set in the env"),
        ("${}", {}, "invalid interpolation"),
        ("${DOMAIN", {}, "never closed"),
        ("${DOMAIN:-${X}", {}, "never closed"),
        ("${DOMAIN/old/new}", {}, "compose allows only"),
        ("${1}", {}, "must be followed by a NAME"),
    ],
)
def test_interpolation_errors_name_the_file_field_and_variable(
    value: str, env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        interpolated(value, env)
    assert (caught.value.path, caught.value.field) == ("compose.yml", "services.app.image")
    assert problem in caught.value.problem


def test_a_literal_dollar_is_escaped_again_so_the_cli_reads_it_literally() -> None:
    env = {"PASSWORD": "pa$word"}
    assert interpolated("sh -c 'echo $$HOME'", env, escape=True) == "sh -c 'echo $$HOME'"
    assert interpolated("$PASSWORD", env, escape=True) == "pa$$word"
    assert interpolated("costs $5", env, escape=True) == "costs $$5"
    assert interpolated("costs $5", env, escape=False) == "costs $5"


def test_interpolation_leaves_keys_and_other_scalars_and_the_input_alone() -> None:
    doc = recipe()
    doc["services"]["app"]["labels"] = {"x.${STACK_NAME}.y": "$STACK_NAME", "n": 3, "b": True}
    before = yaml.safe_dump(doc)
    out = interpolate(doc, {**APP_ENV, "REPLICAS": "2"}, "compose.yml")
    assert yaml.safe_dump(doc) == before
    assert out["services"]["app"]["labels"] == {
        "x.${STACK_NAME}.y": APP_ENV["STACK_NAME"],
        "n": 3,
        "b": True,
    }
    assert out["services"]["app"]["deploy"]["labels"][2] == (
        "traefik.http.routers.web_example_org.rule=Host(`web.example.org`)"
    )
    assert out["configs"]["nginx_config"]["name"] == "web_example_org_nginx_config_v1"
    assert out["services"]["db"]["command"] == ["sh", "-c", "echo $$HOSTNAME && exec postgres"]


def test_an_interpolated_value_gets_the_type_the_cli_would_give_it() -> None:
    doc = recipe()
    doc["networks"]["internal"]["attachable"] = "${ATTACHABLE:-yes}"
    doc["services"]["app"]["ports"] = [{"target": 80, "published": "${PORT}"}]
    out = interpolate(doc, {**APP_ENV, "REPLICAS": "3", "PORT": "8080"}, "compose.yml")
    assert out["services"]["app"]["deploy"]["replicas"] == 3
    assert out["networks"]["internal"]["attachable"] is True
    assert out["services"]["app"]["ports"] == [{"target": 80, "published": 8080}]
    # Only where the schema wants a number: an image tag of digits stays a string.
    assert interpolated("${TAG}", {"TAG": "15"}) == "15"


def test_a_value_that_cannot_take_its_type_names_the_field() -> None:
    with pytest.raises(ConfigError, match="not an integer") as caught:
        interpolate(recipe(), {**APP_ENV, "REPLICAS": "two"}, "compose.yml")
    assert caught.value.field == "services.app.deploy.replicas"


@given(st.text().filter(lambda s: "$" not in s))
def test_a_string_without_a_dollar_is_left_as_it_is(text: str) -> None:
    assert interpolated(text, {}, escape=True) == text


@given(st.text(), st.dictionaries(st.from_regex(r"[A-Z_]{1,4}", fullmatch=True), st.text()))
def test_escaped_output_read_again_by_the_same_rules_gives_the_value_back(
    text: str, env: dict[str, str]
) -> None:
    # What the CLI does with pvcheck's output: interpolate it once more, in any environment.
    escaped = escape_dollars({"v": text})
    assert references(escaped) == set()
    assert interpolate(escaped, env, "x", escape=False) == {"v": text}


# --- labels --------------------------------------------------------------------------------


def test_labels_reach_every_object_the_stack_creates_and_win_a_clash() -> None:
    doc = interpolate(recipe(), APP_ENV, "compose.yml", escape=False)
    doc["services"]["db"]["deploy"]["labels"]["pvcheck.run"] = "recipe-says-so"
    doc["services"]["db"]["labels"] = ["pvcheck.managed", "com.example.tier=data"]
    out, overridden = inject_labels(doc, RUN)

    app, db = out["services"]["app"], out["services"]["db"]
    assert app["deploy"]["labels"] == {
        "traefik.enable": "true",
        "traefik.http.services.web_example_org.loadbalancer.server.port": "80",
        "traefik.http.routers.web_example_org.rule": "Host(`web.example.org`)",
        "traefik.http.routers.web_example_org.entrypoints": "web-secure",
        "coop-cloud.web_example_org.version": "1.2.0+1.25",
        "backupbot.backup": "true",
        **RUN,
    }
    assert app["labels"] == RUN
    assert db["deploy"]["labels"] == {"backupbot.backup": "true", **RUN}
    assert db["labels"] == {**RUN, "com.example.tier": "data"}
    assert overridden == ["pvcheck.managed", "pvcheck.run"]
    assert out["networks"]["internal"] == {"labels": RUN}
    assert out["volumes"] == {"content": {"labels": RUN}, "postgres": {"labels": RUN}}
    assert out["configs"]["nginx_config"]["labels"] == RUN
    # External objects belong to someone else: untouched.
    assert out["networks"]["proxy"] == {"external": True}
    assert "labels" not in out["secrets"]["db_password"]
    # The input is not changed.
    assert doc["volumes"] == {"content": None, "postgres": None}


def test_a_service_without_deploy_or_labels_gets_both_and_its_default_network_too() -> None:
    out, overridden = inject_labels({"services": {"app": {"image": "nginx"}}}, RUN)
    assert out == {
        "services": {"app": {"image": "nginx", "deploy": {"labels": RUN}, "labels": RUN}},
        # The CLI makes `<stack>_default` for a service without networks: labelled too.
        "networks": {"default": {"labels": RUN}},
    }
    assert overridden == []
    joined = {"services": {"app": {"image": "nginx", "networks": ["proxy"]}}}
    assert "default" not in (inject_labels(joined, RUN)[0].get("networks") or {})


@pytest.mark.parametrize(
    ("external", "labelled"),
    [(True, False), ("true", False), ({"name": "their_net"}, False), (False, True), ("no", True)],
)
def test_only_objects_of_this_stack_are_labelled(external: object, labelled: bool) -> None:
    doc = {"services": {"app": {"image": "nginx"}}, "networks": {"net": {"external": external}}}
    out, _ = inject_labels(doc, RUN)
    assert ("labels" in out["networks"]["net"]) is labelled


def test_aliased_yaml_is_labelled_per_object_not_through_the_alias() -> None:
    doc = yaml.safe_load(
        """
x-deploy: &deploy
  labels: ["traefik.enable=true"]
services:
  app: {image: nginx, deploy: *deploy}
  worker: {image: nginx, deploy: *deploy}
"""
    )
    out, _ = inject_labels(doc, {"pvcheck.run": "r"})
    out["services"]["app"]["deploy"]["labels"]["only"] = "app"
    assert "only" not in out["services"]["worker"]["deploy"]["labels"]
    assert out["x-deploy"] == {"labels": ["traefik.enable=true"]}
    assert "pvcheck.run" not in doc["services"]["app"]["deploy"]["labels"]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["a=1", "b=x=y", "bare", "empty="], {"a": "1", "b": "x=y", "bare": "", "empty": ""}),
        ({"a": "1", "n": 2}, {"a": "1", "n": 2}),
        (None, {}),
    ],
)
def test_list_form_labels_become_a_mapping(labels: Any, expected: dict[str, Any]) -> None:
    assert normalise_labels(labels) == expected


def test_labels_that_are_neither_mapping_nor_list_name_the_field() -> None:
    doc = {"services": {"app": {"image": "nginx", "deploy": {"labels": "traefik.enable=true"}}}}
    with pytest.raises(ConfigError) as caught:
        inject_labels(doc, RUN, where="compose.yml")
    assert (caught.value.path, caught.value.field) == ("compose.yml", "services.app.deploy.labels")


# --- paths and environment -----------------------------------------------------------------


def test_relative_files_are_made_absolute_against_the_recipe_folder(tmp_path: Path) -> None:
    doc = recipe()
    doc["secrets"]["smtp_password"] = {"file": "../secrets/smtp"}
    doc["configs"]["absolute"] = {"file": "/etc/recipes/x.conf"}
    doc["services"]["db"]["env_file"] = ["db.env", {"path": "./extra.env", "required": False}]
    doc["services"]["db"]["volumes"].append({"type": "bind", "source": "backups", "target": "/b"})
    doc["services"]["db"]["volumes"].append("~/dumps:/dumps")
    base = tmp_path / "recipes" / "web"
    out = absolutize_files(doc, base)

    assert out["configs"]["nginx_config"]["file"] == str(base / "nginx.conf.tmpl")
    assert out["configs"]["absolute"]["file"] == "/etc/recipes/x.conf"
    assert out["secrets"]["smtp_password"]["file"] == str(tmp_path / "recipes" / "secrets/smtp")
    assert out["services"]["app"]["env_file"] == str(base / ".env.app")
    assert out["services"]["db"]["env_file"] == [
        str(base / "db.env"),
        {"path": str(base / "extra.env"), "required": False},
    ]
    assert out["services"]["app"]["volumes"] == [
        "content:/usr/share/nginx/html",  # a named volume, not a path
        f"{base / 'static'}:/srv/static:ro",
    ]
    assert out["services"]["db"]["volumes"][1:] == [
        {"type": "bind", "source": str(base / "backups"), "target": "/b"},
        "~/dumps:/dumps",  # the CLI expands ~ the same wherever the file is
    ]
    assert doc["configs"]["nginx_config"]["file"] == "nginx.conf.tmpl"


def test_a_bare_environment_name_takes_the_app_env_value_or_is_dropped() -> None:
    doc = {
        "services": {
            "app": {"environment": ["DOMAIN", "HOME", "FIXED=1"]},
            "db": {"environment": {"DOMAIN": None, "HOME": None, "FIXED": "1"}},
        }
    }
    out = resolve_environment(doc, {"DOMAIN": "a.org"})
    assert out["services"]["app"]["environment"] == ["DOMAIN=a.org", "FIXED=1"]
    assert out["services"]["db"]["environment"] == {"DOMAIN": "a.org", "FIXED": "1"}


# --- loading and the whole preparation -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("- just\n- a list\n", "", "is a mapping"),
        ("version: '3.8'\n", "services", "services mapping"),
        ("services: [app]\n", "services", "services mapping"),
        ("services: {}\n", "services", "services mapping"),
        ("services:\n  app: nginx\n", "services.app", "a service is a mapping"),
        ("services: {app: {image: x}}\nvolumes: [content]\n", "volumes", "must be a mapping"),
        ("services: {app: {image: x}}\nsecrets: {pw: file.txt}\n", "secrets.pw", "mapping"),
        ("services: {app: {image: [}\n", "", "not valid YAML"),
        ("", "", "is a mapping"),
    ],
)
def test_a_compose_file_of_the_wrong_shape_is_refused_naming_it(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path / "compose.yml", text)
    with pytest.raises(ConfigError) as caught:
        load_compose(path)
    assert (caught.value.path, caught.value.field) == (str(path), field)
    assert problem in caught.value.problem


def test_a_compose_file_that_is_a_link_missing_or_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link.yml").symlink_to(write(tmp_path / "real.yml", RECIPE))
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    write(
        tmp_path / "bomb.yml",
        "\n".join(["x-bomb:", *(f"  {line}" for line in lines)])
        + "\nservices: {app: {image: x}}\n",
    )
    for name, problem in [
        ("link", "symbolic link"),
        ("absent", "not found"),
        ("bomb", "too large"),
    ]:
        with pytest.raises(ConfigError, match=problem) as caught:
            load_compose(tmp_path / f"{name}.yml")
        assert caught.value.path == str(tmp_path / f"{name}.yml")


def test_prepare_gives_the_cli_a_file_with_nothing_left_to_interpolate(tmp_path: Path) -> None:
    path = write(tmp_path / "compose.yml", RECIPE)
    env = {**APP_ENV, "NGINX_VERSION": "1.27", "PASSWORD": "pa$word"}
    text, overridden = prepare(path, env, RUN, where="web/compose.yml")
    out = yaml.safe_load(text)

    assert overridden == []
    assert references(out) == set()  # the CLI's own interpolation changes nothing ...
    cli_view = interpolate(out, {"DOMAIN": "from-the-cli-env"}, "x", escape=False)
    app = cli_view["services"]["app"]
    assert app["image"] == "nginx:1.27"
    assert app["environment"] == [
        "DOMAIN=web.example.org",
        "DB_HOST=web_example_org_db",
        "DB_PASSWORD_FILE=/run/secrets/db_password",
    ]
    assert app["deploy"]["replicas"] == 1
    assert app["deploy"]["labels"]["traefik.http.routers.web_example_org.rule"] == (
        "Host(`web.example.org`)"
    )
    assert app["deploy"]["labels"]["pvcheck.run"] == "run-42"
    assert app["env_file"] == str(tmp_path / ".env.app")
    # ... and a `$$` of the recipe reaches the container as one `$`.
    assert cli_view["services"]["db"]["command"][2] == "echo $HOSTNAME && exec postgres"
    assert cli_view["configs"]["nginx_config"] == {
        "name": "web_example_org_nginx_config_v1",
        "file": str(tmp_path / "nginx.conf.tmpl"),
        "template_driver": "golang",
        "labels": RUN,
    }
    assert cli_view["secrets"]["db_password"] == {
        "external": True,
        "name": "web_example_org_db_password_v1",
    }


def test_prepare_refuses_naming_every_variable_the_env_does_not_set(tmp_path: Path) -> None:
    path = write(tmp_path / "compose.yml", RECIPE)
    env = {k: v for k, v in APP_ENV.items() if k not in ("DOMAIN", "SECRET_DB_PASSWORD_VERSION")}
    with pytest.raises(ConfigError) as caught:
        prepare(path, env, RUN, where="web/compose.yml")
    assert caught.value.path == "web/compose.yml"
    assert caught.value.problem == (
        "variables not set in the env: DOMAIN (at services.app.deploy.labels[2]), "
        "SECRET_DB_PASSWORD_VERSION (at secrets.db_password.name)"
    )


def test_prepare_a_list_label_key_with_a_dollar_keeps_one_dollar(tmp_path: Path) -> None:
    # Compose does not interpolate keys: a key normalised from a list item must not be escaped.
    path = write(
        tmp_path / "compose.yml",
        "services:\n  app:\n    image: x\n    deploy:\n      labels: ['a$$b=c$$d']\n",
    )
    out = yaml.safe_load(prepare(path, {}, RUN)[0])
    assert out["services"]["app"]["deploy"]["labels"] == {"a$b": "c$$d", **RUN}


def test_prepare_reports_the_run_label_a_recipe_tried_to_set(tmp_path: Path) -> None:
    text = RECIPE.replace(
        '- "traefik.enable=true"', '- "traefik.enable=true"\n        - "pvcheck.run=mine"'
    )
    path = write(tmp_path / "compose.yml", text)
    prepared, overridden = prepare(path, APP_ENV, RUN)
    assert overridden == ["pvcheck.run"]
    assert (
        yaml.safe_load(prepared)["services"]["app"]["deploy"]["labels"]["pvcheck.run"] == "run-42"
    )


def test_the_twin_recipe_prepares_with_its_env(tmp_path: Path) -> None:
    env = {
        "IMAGE": "busybox:1.36",
        "VERSION": "2.0.0",
        "DOMAIN": "twin.test",
        "STACK_NAME": "twin_test",
    }
    assert unset_variables(load_compose(TWIN_RECIPE), {}) == [
        "DOMAIN",
        "IMAGE",
        "STACK_NAME",
        "VERSION",
    ]
    out = yaml.safe_load(prepare(TWIN_RECIPE, env, RUN)[0])
    app = out["services"]["app"]
    assert app["image"] == "busybox:1.36"
    assert app["environment"] == ["DOMAIN=twin.test", "VERSION=2.0.0"]
    assert app["deploy"]["labels"]["backupbot.backup"] == "true"
    assert app["deploy"]["labels"]["coop-cloud.twin_test.version"] == "2.0.0"
    assert out["volumes"] == {"content": {"labels": RUN}}
    assert out["networks"] == {"proxy": {"external": True}}


def test_dump_writes_aliased_values_in_full_and_keeps_the_order() -> None:
    shared = {"order": "start-first"}
    doc = {"services": {"b": {"deploy": shared}, "a": {"deploy": shared}}}
    text = dump_compose(doc)
    assert "&" not in text and "*" not in text
    assert list(yaml.safe_load(text)["services"]) == ["b", "a"]
    assert yaml.safe_load(text) == doc


# --- what a recipe may reach (pvcheck runs the CLI as root) --------------------------------
def _confinement(tmp_path: Path) -> Confinement:
    recipe = tmp_path / "recipe"
    recipe.mkdir(exist_ok=True)
    (recipe / "nginx.conf.tmpl").write_text("server {}\n")
    files_to = tmp_path / "private"
    files_to.mkdir(exist_ok=True)
    return Confinement("pvc-notes-abc123", recipe, files_to, "proxy")


def _app(**service: Any) -> dict[str, Any]:
    return {"services": {"app": {"image": "nginx", **service}}}


@pytest.mark.faults
@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_app(privileged=True), "services.app.privileged"),
        (_app(cap_add=["SYS_ADMIN"]), "services.app.cap_add"),
        (_app(sysctls={"net.ipv4.ip_forward": 1}), "services.app.sysctls"),
        (_app(volumes=["/:/host"]), "services.app.volumes[0]"),
        (_app(volumes=["./data:/data"]), "services.app.volumes[0]"),
        (
            _app(volumes=[{"type": "bind", "source": "/etc", "target": "/x"}]),
            "services.app.volumes[0]",
        ),
        (
            {**_app(), "secrets": {"db": {"external": True, "name": "prodapp_db_password_v1"}}},
            "secrets.db",
        ),
        (
            {**_app(), "volumes": {"data": {"external": True, "name": "prodapp_data"}}},
            "volumes.data",
        ),
        ({**_app(), "networks": {"other": {"external": True}}}, "networks.other"),
        ({**_app(), "configs": {"c": {"name": "traefik_conf_v1", "file": "x"}}}, "configs.c.name"),
        ({**_app(), "volumes": {"v": {"name": "someones_volume"}}}, "volumes.v.name"),
        ({**_app(), "configs": {"c": {"file": "../../etc/shadow"}}}, "configs.c.file"),
        ({**_app(), "configs": {"c": {"file": "/etc/shadow"}}}, "configs.c.file"),
        (_app(env_file=["/root/.env"]), "services.app.env_file"),
    ],
)
def test_a_recipe_cannot_reach_past_its_own_stack(
    tmp_path: Path, doc: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^compose\.yml: {re.escape(field)}: .*refused"):
        confine(doc, _confinement(tmp_path), where="compose.yml")


def test_its_own_objects_and_files_pass_and_files_are_private_copies(tmp_path: Path) -> None:
    c = _confinement(tmp_path)
    doc = {
        **_app(networks=["proxy", "internal"]),
        "networks": {"proxy": {"external": True}, "internal": {}},
        "secrets": {"key": {"external": True, "name": "pvc-notes-abc123_key_v1"}},
        "configs": {"conf": {"name": "pvc-notes-abc123_conf_v1", "file": "nginx.conf.tmpl"}},
        "volumes": {"content": None},
    }
    out = confine(doc, c, where="compose.yml")
    copy = Path(out["configs"]["conf"]["file"])
    assert copy.parent == c.files_to and copy.read_text() == "server {}\n"
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    assert out["secrets"] == doc["secrets"] and out["networks"] == doc["networks"]


@pytest.mark.faults
def test_a_recipe_file_that_is_a_link_is_refused_unread(tmp_path: Path) -> None:
    c = _confinement(tmp_path)
    (tmp_path / "other.env").write_text("PASSWORD=theirs\n")
    (c.recipe_dir / "app.env").symlink_to(tmp_path / "other.env")
    with pytest.raises(ConfigError, match=r"services\.app\.env_file"):
        confine(_app(env_file="app.env"), c, where="compose.yml")
    assert list(c.files_to.iterdir()) == []


def test_yaml_is_read_as_the_docker_cli_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(
        "services:\n  app:\n    image: x\n    ports: [22:22]\n    environment: {T: 12:30}\n"
    )
    doc = load_compose(path)
    # PyYAML's YAML 1.1 would make these 1342 and 750 (base 60); the CLI keeps the text.
    assert doc["services"]["app"]["ports"] == ["22:22"]
    assert doc["services"]["app"]["environment"] == {"T": "12:30"}
    path.write_text("services:\n  app:\n    image: x\n    image: y\n")
    with pytest.raises(ConfigError, match="key 'image' given twice"):
        load_compose(path)


@pytest.mark.faults
def test_aliases_that_expand_to_megabytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    big = "x" * 100_000
    aliases = ", ".join(["*b"] * 100)  # 100 KB of text, expanding to 10 MB
    path.write_text(f"x-big: &b {big}\nservices:\n  app:\n    image: x\n    command: [{aliases}]\n")
    with pytest.raises(ConfigError, match="too large"):
        load_compose(path)
