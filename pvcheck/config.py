"""The validated TOML config: one file describes the target host, its checks and the run's caps.

Every field carries a description; docs/config.md is generated from them
(`pvcheck config reference`, pvcheck.configref). Bad input raises ConfigError naming file
and field. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import httpx
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pvcheck.compose import load_compose, read_env_file, unset_variables
from pvcheck.errors import ConfigError, StateFileError
from pvcheck.records import VIP_SIGNATURE
from pvcheck.resources import LAB
from pvcheck.safeio import read_capped, require_root_only
from pvcheck.statefiles import DocsPaths

# The built-in lab's config: the default of every command and flow parameter.
LAB_CONFIG = LAB / "pvcheck.toml"

# Hard caps: no config value or UI parameter may raise the run past these.
MAX_ALLOCATOR_BATCH = 20
MAX_ALLOCATOR_CONCURRENCY = 10
MAX_ALLOCATOR_ROUNDS = 5

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SECRET_KEY_RE = re.compile(r"(token|password|passwd|secret|api_?key)$", re.IGNORECASE)


def _docker_name(value: str) -> str:
    # Names end up in docker API filters and in rendered commands: keep them inert.
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; at most 63)"
        )
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    if base is not None and not value.is_absolute():
        # Normalised, not resolved: a link stays a link, so the reader that refuses links
        # (safeio) sees it instead of its target.
        return Path(os.path.normpath(Path(base) / value))
    return value


def _subnet(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid CIDR subnet ({exc})") from None
    if net.version != 4:
        raise ValueError(f"{value!r}: only IPv4 overlay subnets are supported")
    return str(net)


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except Exception as exc:  # httpx raises InvalidURL or TypeError for junk
        raise ValueError(f"{value!r} is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    if url.userinfo:
        # Credentials in a URL reach HOW commands, STATUS, logs and remote command lines.
        raise ValueError(
            "a URL must not carry user:password@; use token_env or token_block for secrets"
        )
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} must be HOST:PORT, like 127.0.0.1:443")
    return value


# ssh://[user@]host[:port]; nothing that ssh could read as an option.
SSH_URL = re.compile(
    r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{1,5}))?$"
)
Name = Annotated[str, AfterValidator(_docker_name)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
Subnet = Annotated[str, AfterValidator(_subnet)]
Url = Annotated[str, AfterValidator(_http_url)]
HostPort = Annotated[str, AfterValidator(_host_port)]
Tier = Literal["install", "upgrade", "backup_restore", "functional", "lint"]
DEFAULT_TIERS: tuple[Tier, ...] = ("install", "upgrade")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SshConfig(Section):
    """How an ssh:// target is reached (the system ssh client; host keys always verified)."""

    identity_file: ConfigPath | None = Field(
        None, description="private key for the ssh login; unset: ssh's own keys"
    )
    known_hosts: ConfigPath | None = Field(
        None,
        description="known_hosts file the host key is checked against; "
        "unset: ssh's own ~/.ssh/known_hosts",
    )
    config_file: ConfigPath | None = Field(
        None,
        description="ssh client config read instead of ~/.ssh/config (`ssh -F`): where the "
        "target's Host alias (ssh://cc-ci) is defined; unset: ssh's own",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=120, description="ssh connect timeout, in seconds"
    )
    docker_socket: str = Field(
        "/var/run/docker.sock",
        pattern=r"^/[A-Za-z0-9._/-]+$",
        description="path of the Docker Engine's unix socket on the remote host",
    )

    @field_validator("config_file")
    @classmethod
    def _root_only(cls, path: Path | None) -> Path | None:
        # An ssh config runs commands (ProxyCommand, Match exec): as root, it must be root's,
        # followed as ssh follows it (every link and folder on the way; one not made yet, in a
        # folder only root can write). Checked again before each use (pvcheck.hosts).
        if path is not None:
            try:
                require_root_only(path, "the ssh config")
            except StateFileError as exc:
                raise ValueError(exc.problem) from None
        return path


class TargetConfig(Section):
    name: Name = Field(
        "local", description="the target's name: shown in evidence, names its served deployments"
    )
    docker_host: str = Field(
        "unix:///var/run/docker.sock",
        description="the docker endpoint: unix://PATH, tcp://HOST:PORT or ssh://[user@]host[:port]",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="timeout of each docker API call, in seconds"
    )
    api_attempts: int = Field(
        3, ge=1, le=10, description="attempts for a docker API call that fails transiently"
    )
    reconnect_s: float = Field(
        60.0,
        ge=0,
        le=600,
        description="seconds docker calls ride out an engine that stopped answering mid-run "
        "(a dockerd restart) before the run fails; an engine unreachable at start fails at "
        "once (exit 3)",
    )
    state_dir: ConfigPath = Field(
        Path("/var/lib/pvcheck"),
        description="folder of the host lock and the registry of started runs, on the "
        "machine pvcheck runs on",
    )
    ssh: SshConfig = Field(
        SshConfig(),
        description="how an ssh:// target is reached: the system ssh client, host keys "
        "always verified",
    )

    @field_validator("docker_host")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(unix|ssh|tcp)://\S+$", value):
            raise ValueError(f"{value!r} must start with unix://, ssh:// or tcp://")
        if value.startswith("ssh://") and not SSH_URL.match(value):
            raise ValueError(f"{value!r} must be ssh://[user@]host[:port]")
        return value


class NetworkConfig(Section):
    name: Name = Field("proxy", description="name of the shared overlay network")
    subnet: Subnet = Field(description="the subnet the network must have (IPv4 CIDR, no host bits)")
    driver: Name = Field("overlay", description="the driver the network must have")
    headroom_warn_pct: float = Field(
        25.0,
        ge=0,
        le=100,
        description="facts.headroom fails when less than this share of the subnet is free, "
        "in percent (docker's ip-util-check warns at 75 % use)",
    )


class ServicesConfig(Section):
    control_plane: list[Name] = Field(
        min_length=1, description="swarm services that must run all their desired replicas"
    )
    restart_window_h: float = Field(
        24.0, gt=0, le=24 * 30, description="window for counting recent failed tasks, in hours"
    )


class RouteConfig(Section):
    name: Name = Field(description="unique route name; its check is route.NAME")
    url: Url = Field(description="http(s) URL; its host is the Host header and the TLS SNI")
    connect_to: HostPort | None = Field(
        None,
        description="HOST:PORT to connect to instead of the URL's host (like curl "
        "--connect-to); unset: http.connect_to, else the URL's host",
    )
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200],
        min_length=1,
        description="accepted HTTP status codes (redirects are not followed)",
    )
    body_contains: str | None = Field(
        None, max_length=1024, description="text the response body must contain"
    )
    verify_tls: bool = Field(
        True, description="verify the TLS certificate; turning it off is shown in STATUS"
    )
    ca_bundle: ConfigPath | None = Field(
        None,
        description="PEM CA bundle to verify this route's certificate with instead of the "
        "system's CAs (also given to the HOW curl commands as --cacert); unset: "
        "http.ca_bundle, else the system's",
    )
    core: bool = Field(
        True,
        description="a core route that is down holds back all new test traffic (re-probed "
        "before the deploy proof and before the reproduction)",
    )
    check_from: Literal["here", "host"] = Field(
        "here",
        description="here: probed from where pvcheck runs; host: by curl on the target host "
        "over ssh",
    )


class HttpConfig(Section):
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="hard timeout of each attempt, in seconds"
    )
    attempts: int = Field(3, ge=1, le=10, description="attempts per route probe")
    backoff_s: float = Field(
        0.5,
        ge=0,
        le=30,
        description="multiplier of the exponential backoff between attempts, in seconds "
        "(at most 10 s a wait)",
    )
    concurrency: int = Field(16, ge=1, le=64, description="routes probed at once")
    connect_to: HostPort | None = Field(
        None,
        description="connect_to of every route (and the compose recipe's route) that sets "
        "none, such as the host's own Traefik: an overlay config moves all routes at once",
    )
    ca_bundle: ConfigPath | None = Field(
        None, description="ca_bundle of every route that sets none"
    )


class LogsConfig(Section):
    source: Literal["journald", "file", "command"] = Field(
        description="where the docker log is read; a log that cannot be read (missing file, "
        "failing command, no journal) makes the log checks ERROR, never a clean scan"
    )
    unit: Name = Field(
        "docker", description="journald unit (journalctl -u UNIT --since … --until …)"
    )
    path: ConfigPath | None = Field(None, description="the log file (source = file)")
    command: list[str] | None = Field(
        None,
        description="argument list that prints the log (source = command; never through a "
        "shell); {since} and {until} are replaced",
    )
    window_h: float = Field(
        26.0, gt=0, le=24 * 30, description="scan window before the run, in hours"
    )
    max_lines: int = Field(50, ge=1, le=10_000, description="matching lines kept in the evidence")

    @model_validator(mode="after")
    def _source_has_its_field(self) -> LogsConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs path")
        if self.source == "command" and not self.command:
            raise ValueError("source 'command' needs command (an argument list)")
        return self


# What abra gives every app beside its env file; a compose file may always use these.
ABRA_VARIABLES = ("STACK_NAME", "DOMAIN")
_DOMAIN_RE = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"


class FunctionalCheck(Section):
    """A page of the deployed app and text it must show. Placeholders: {stack}, {domain},
    {secret_sha256:KEY} (the hash of the app secret KEY pvcheck generated)."""

    path: str = Field(
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        max_length=200,
        description="URL path of the page on the app's domain",
    )
    body: str = Field(
        min_length=1,
        max_length=500,
        description="text the page must show; {stack}, {domain}, {secret_sha256:KEY} are replaced",
    )


class ComposeDriverConfig(Section):
    file: ConfigPath = Field(description="the recipe's compose file")
    env_file: ConfigPath | None = Field(
        None,
        description="the app's env file (KEY=VALUE lines, as abra reads them); pvcheck sets "
        "STACK_NAME (unique to the run) and DOMAIN",
    )
    domain: str | None = Field(
        None, pattern=_DOMAIN_RE, description="the app's domain; unset: DOMAIN from env_file"
    )
    upgrade_file: ConfigPath | None = Field(
        None, description="the compose file the upgrade deploys; unset: file"
    )
    upgrade_env: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        description="variables the upgrade changes (the next version)",
    )
    upgrade_body: str | None = Field(
        None, max_length=500, description="text the upgraded app's page shows"
    )
    route: RouteConfig = Field(description="the app's route; its page must show body_contains")
    backup_restore: str | None = Field(
        None,
        description="why backup/restore does not apply; unset: not declared, and the service "
        "labelled backupbot.backup=true is backed up from backupbot.backup.path",
    )
    backup_served_at: str | None = Field(
        None,
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        max_length=200,
        description="URL path where the app serves its backed-up folder (the lab recipe: "
        "/data/); unset: the restored marker is read inside the app, not through the route",
    )
    functional: list[FunctionalCheck] = Field(
        default_factory=list, max_length=20, description="pages the functional tier checks"
    )

    @model_validator(mode="after")
    def _files_deploy_with_this_env(self) -> ComposeDriverConfig:
        # Read now, so that a compose file that cannot be read, or needs a variable the env
        # file does not set, stops the run before anything is deployed; the ConfigError
        # names the compose file (and the variable).
        env = read_env_file(self.env_file) if self.env_file else {}
        if not (self.domain or env.get("DOMAIN")):
            raise ValueError("the app needs a domain: set domain, or DOMAIN in env_file")
        env |= dict.fromkeys(ABRA_VARIABLES, "x")
        for path, extra in ((self.file, {}), (self.upgrade_file or self.file, self.upgrade_env)):
            doc = load_compose(path)
            missing = unset_variables(doc, {**env, **extra}, where=str(path))
            if missing:
                named = ", ".join(missing)
                where = f"{self.env_file}" if self.env_file else "no env_file"
                raise ConfigError(str(path), "", f"variables not set ({where}): {named}")
        return self


class CommandDriverConfig(Section):
    argv: list[str] = Field(
        min_length=1, description="the harness command, an argument list (never a shell)"
    )
    results: ConfigPath = Field(description="the results.json the harness writes")
    timeout_s: float = Field(
        1800.0, gt=0, le=6 * 3600, description="deadline of the harness, in seconds"
    )


class DroneDriverConfig(Section):
    url: Url = Field(description="the Drone server's URL (no user:password@ in it)")
    repo: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="the Drone repository that runs the harness, OWNER/NAME",
    )
    branch: str = Field(
        "main", pattern=r"^[A-Za-z0-9_./-]+$", description="the branch the build runs"
    )
    token_env: str = Field(
        "DRONE_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the Drone token",
    )
    token_block: Name | None = Field(
        None, description="Prefect Secret block holding the Drone token, instead of token_env"
    )
    recipe_param: Name = Field("RECIPE", description="build parameter that names the recipe")
    timeout_s: float = Field(
        3600.0, gt=0, le=6 * 3600, description="deadline of the build, in seconds"
    )
    poll_s: float = Field(
        10.0, gt=0, le=300, description="seconds between looks at the build's state"
    )
    results_path: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^/[^{}\x00-\x1f]*\{build\}[^{}\x00-\x1f]*$",
        description="where the build's harness writes results.json on the host, `{build}` "
        "standing for the Drone build number (cc-ci: "
        "/var/lib/cc-ci-runs/{build}/results.json); the tiers, the teardown and leak flags "
        "are read from it; unset: tiers from the build's step names",
    )


# A harness run's id as a folder name under the runs folder: a Drone build number or a
# manual run's name (cc-ci: 608, m2r-bluesky-pds); never a path, never an option.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]


class AdoptConfig(Section):
    """Adopting a finished harness run as the deploy proof (`pvcheck run --adopt RUN`):
    where its results are, and what makes it one that ran on the fixed network."""

    results_path: str = Field(
        max_length=4096,
        pattern=r"^/[^{}\x00-\x1f]*\{run\}[^{}\x00-\x1f]*$",
        description="where a harness run's results.json is on the host, `{run}` standing for "
        "the run id (cc-ci: /var/lib/cc-ci-runs/{run}/results.json)",
    )
    results_url: str | None = Field(
        None,
        max_length=2000,
        pattern=r"^https?://[^\s{}]*\{run\}[^\s{}]*$",
        description="where the same file is published, `{run}` standing for the run id; "
        "STATUS links it (cc-ci: https://ci.commoninternet.net/runs/{run}/results.json)",
    )
    fixed_at: AwareDatetime | None = Field(
        None,
        description="when the fix took effect (a TOML date-time with its offset); the later "
        "of it and the network's creation counts (unset: the network's creation); a run that "
        "may have started before that is refused",
    )
    recipes: list[Name] = Field(
        default_factory=list,
        max_length=100,
        description="the recipes whose runs may stand for the deploy proof (each deploys "
        "through the network as the enrolled one does); empty: deploy.recipe alone",
    )
    max_run_s: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="the longest a harness run lasts (cc-ci: its own 3600 s alarm): a run with "
        "no Drone build (a manual run's name, or no deploy.drone) started at the earliest this "
        "long before it finished",
    )

    stack_prefix_chars: int = Field(
        0,
        ge=0,
        le=63,
        description="how many leading characters of the recipe's name begin its run stacks' "
        "names (cc-ci: 4); every stack deploy.stack_pattern admits that begins so must be "
        "gone; 0: every stack the pattern admits",
    )

    def results_of(self, run: str) -> Path:
        """Where run `run`'s results.json is on the host (`run` a RunId)."""
        return Path(self.results_path.replace("{run}", run))

    def link_of(self, run: str) -> str:
        """Where run `run`'s results are published ("" when not configured)."""
        return self.results_url.replace("{run}", run) if self.results_url else ""


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, Field(max_length=500), AfterValidator(_regex)]
# A systemd timer or service name, passed to systemctl after `--`: never an option.
SystemdUnit = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9:_.@-]{0,250}\.(timer|service)$")
]


class ActiveRunsConfig(Section):
    folder: ConfigPath | None = Field(
        None,
        description="the harness's active-run folder: each entry is a run in progress "
        "(one that cannot be listed counts as busy)",
    )
    stack_pattern: Regex | None = Field(
        None,
        description="regular expression of another harness run's stacks (stacks holding a "
        "control-plane service never count); unset: deploy.stack_pattern",
    )
    markers: list[ConfigPath] = Field(
        default_factory=list,
        max_length=20,
        description="files whose existence means a sweep (such as the weekly upgrade run) "
        "is in progress",
    )
    drone_builds: bool = Field(
        True, description="also ask the Drone API (deploy.drone, when set) for running builds"
    )
    lock_folder: ConfigPath | None = Field(
        None,
        description="folder on the target host of the harness's run locks (cc-ci: /run/lock): "
        "a lock file there that a process holds a flock on is a run in progress, an unheld "
        "(stale) one is not; probed through /proc/locks on the host, never locked",
    )
    lock_pattern: Regex = Field(
        r"\.lock$",
        description="regular expression of the run lock files' names in lock_folder; a group "
        "named domain names the run",
    )
    sweep_units: list[SystemdUnit] = Field(
        default_factory=list,
        max_length=20,
        description="systemd timers or services of sweeps on the target host (cc-ci: "
        "nightly-sweep.timer), read with systemctl show: a running service (for a timer, "
        "the unit it triggers) is an active sweep; a unit that is not loaded counts as busy; "
        "a host that does not run systemd runs none",
    )
    sweep_units_here: list[SystemdUnit] = Field(
        default_factory=list,
        max_length=20,
        description="the same, for sweep units on the machine pvcheck runs on, when their "
        "timer lives there rather than on the target (cc-ci's cc-ci-upgrade-all.timer is on "
        "the orchestrator)",
    )
    sweep_lead_s: float = Field(
        0.0,
        ge=0,
        le=24 * 3600,
        description="a sweep timer due to fire within this many seconds (or overdue) counts "
        "as an active sweep too; 0: only a running sweep",
    )
    sweep_window_s: float = Field(
        0.0,
        ge=0,
        le=24 * 3600,
        description="a sweep counts as active for this many seconds after its timer last "
        "fired, even when its service has ended (a service that only launches the sweep in "
        "the background); 0: only while its service runs",
    )
    wait_s: float = Field(
        300.0,
        ge=0,
        le=6 * 3600,
        description="how long to wait for other runs before ending INCOMPLETE, in seconds",
    )


class DeployConfig(Section):
    driver: Literal["compose", "command", "drone"] = Field(
        description="how the recipe is deployed: compose (docker stack deploy by pvcheck), "
        "command (the operator's harness) or drone (a Drone build); its section is required"
    )
    recipe: Name = Field(description="the recipe the deploy proof deploys")
    tiers: list[Tier] = Field(
        default_factory=lambda: list(DEFAULT_TIERS),
        min_length=1,
        description="tiers the recipe must pass",
    )
    stack: Name | None = Field(
        None,
        description="the fixed stack an external harness deploys the recipe as "
        "(command/drone drivers); attachment sampling and the teardown check watch it; "
        "unset: the recipe's name, unless stack_pattern is set",
    )
    stack_pattern: Regex | None = Field(
        None,
        description="regular expression of the stacks a harness generates (cc-ci: "
        "^[a-z0-9]{4}-[0-9a-f]{6}_ci_commoninternet_net$): the run's stack is found by it, "
        "and other stacks matching it count as active runs",
    )
    converge_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="deadline for the recipe to run and its route to answer, in seconds",
    )
    compose: ComposeDriverConfig | None = Field(
        None, description="the compose driver: pvcheck deploys the recipe itself"
    )
    command: CommandDriverConfig | None = Field(
        None, description="the command driver: the operator's harness deploys the recipe"
    )
    drone: DroneDriverConfig | None = Field(
        None, description="the Drone driver: a Drone build deploys the recipe"
    )
    adopt: AdoptConfig | None = Field(
        None,
        description="adopting a finished harness run as the deploy proof instead of starting "
        "one (`pvcheck run --adopt RUN`)",
    )
    active_runs: ActiveRunsConfig = Field(
        ActiveRunsConfig(),
        description="what counts as another run or sweep in progress; while one is, no new "
        "test traffic starts, and anything that cannot be read counts as busy",
    )

    @model_validator(mode="after")
    def _driver_has_its_section(self) -> DeployConfig:
        if getattr(self, self.driver) is None:
            raise ValueError(f"driver {self.driver!r} needs a [deploy.{self.driver}] section")
        return self


class AllocatorConfig(Section):
    batch: int = Field(
        5, ge=1, le=MAX_ALLOCATOR_BATCH, description="throwaway stacks per round (hard cap)"
    )
    concurrency: int = Field(
        5,
        ge=1,
        le=MAX_ALLOCATOR_CONCURRENCY,
        description="stacks deployed or removed at once (hard cap)",
    )
    rounds: int = Field(
        1, ge=1, le=MAX_ALLOCATOR_ROUNDS, description="deploy-then-remove rounds (hard cap)"
    )
    image: str = Field(
        "local/busybox:1",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./:@-]{0,200}$",
        description="image of the throwaway services",
    )
    leak_tolerance: int = Field(
        2, ge=0, description="leaked addresses per round that still pass (any leak is reported)"
    )
    headroom_floor_pct: float = Field(
        50.0,
        ge=0,
        le=100,
        description="no reproduction below this free share of a network, in percent "
        "(alloc.headroom fails below it afterwards)",
    )
    settle_timeout_s: float = Field(
        90.0,
        gt=0,
        le=1800,
        description="deadline for the allocator to release addresses, in seconds",
    )
    scratch_subnet: Subnet = Field(
        "10.254.0.0/24",
        description="subnet of the scratch overlay the rounds race on, in the shared "
        "network's role (never on the real one: what leaks dies with it); must hold "
        "2 x batch x (rounds + 1) addresses and overlap no network (checked at run time)",
    )
    publish_ports: bool = Field(
        False,
        description="throwaways publish a port in ingress mode; those take ingress "
        "addresses, which leak the same way (only while ingress stays above the floor)",
    )
    stop_grace_s: float = Field(
        10.0,
        ge=1,
        le=120,
        description="throwaways stop as real apps do: SIGTERM, then this grace before "
        "SIGKILL, in seconds",
    )
    removal: Literal["concurrent", "services-first"] = Field(
        "concurrent",
        description="concurrent: every stack removed at once by docker stack rm (the "
        "incident's pattern); services-first: services removed, their tasks waited for, then "
        "the stacks (the docker/cli#7304 mitigation)",
    )
    capacity_probe: bool = Field(
        True,
        description="after the rounds, fill the scratch network until the allocator refuses: "
        "its own count of what leaked on engines without IPAM status (API < 1.52)",
    )
    ingress_probe_max: int = Field(
        256,
        ge=0,
        le=1024,
        description="ingress headroom on engines without IPAM status: at most this many "
        "minimal published-port services, never more than the floor needs (0: the endpoint "
        "list only)",
    )
    gc_race_fail: int | None = Field(
        None,
        ge=1,
        description="GC-race lines (key modified, network … remove failed) in the run's "
        "window from which logs.gc-race fails; fewer are a warning; unset: never a failure",
    )
    horizon_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="alloc.forecast fails when the shared network or ingress would run out "
        "sooner than this at the measured leak, in days",
    )
    runs_dir: ConfigPath | None = Field(
        None,
        description="the harness's run folders: entries changed in the last 7 days x "
        "tasks_per_run give the removal rate; unset: removals_per_day",
    )
    removals_per_day: float = Field(
        20.0,
        ge=0,
        le=100000,
        description="task removals a day on the host, for the forecast, when runs_dir is unset",
    )
    tasks_per_run: int = Field(
        2, ge=1, le=1000, description="tasks removed per harness run (with runs_dir)"
    )
    ingress_removals_per_day: float = Field(
        0.0,
        ge=0,
        le=100000,
        description="published-port task removals a day: what leaks on ingress (recipes "
        "behind a reverse proxy publish none)",
    )

    @model_validator(mode="after")
    def _scratch_fits(self) -> AllocatorConfig:
        room = (1 << (32 - ipaddress.ip_network(self.scratch_subnet).prefixlen)) - 3
        need = 2 * self.batch * (self.rounds + 1)
        if room < need:
            raise ValueError(
                f"scratch_subnet {self.scratch_subnet} holds {room} addresses; "
                f"{self.rounds} round(s) of {self.batch} need {need} (a VIP and a task "
                "address per stack, and room for what leaks)"
            )
        return self


# The part of the VIP signature a guard's grep pattern must contain when none is configured:
# its distinctive end. Shorter fragments count ordinary lines ("I", "VIP"), and with -i
# "allocating vip" also counts swarm's "error deallocating vip".
DEFAULT_SIGNATURE_PART = "while allocating VIP"


def default_signature_part(signature: str) -> str:
    """The default part for a signature: the VIP one's distinctive end, or all of another."""
    return DEFAULT_SIGNATURE_PART if DEFAULT_SIGNATURE_PART in signature else signature


class GuardConfig(Section):
    file: ConfigPath = Field(description="the upgrade procedure, a Markdown file")
    section: str = Field(
        "0",
        min_length=1,
        max_length=200,
        description="what the Step-0 section's heading starts with (0, Step 0)",
    )
    signature: str = Field(
        VIP_SIGNATURE,
        min_length=10,
        max_length=500,
        description="the docker log line the guard must detect (default: the VIP one)",
    )
    signature_part: str | None = Field(
        None,
        min_length=10,
        max_length=500,
        description="the part of signature the Step-0 grep's pattern must contain; unset: "
        "'while allocating VIP' for the VIP signature, all of another",
    )
    detect_command: list[str] | None = Field(
        None,
        description="argument list that counts the signature on stdin; unset: the section's "
        "… | grep … stage (never through a shell)",
    )

    @model_validator(mode="after")
    def _part_of_the_signature(self) -> GuardConfig:
        if self.signature_part is not None and self.signature_part not in self.signature:
            raise ValueError(
                f"signature_part {self.signature_part!r} is not part of signature "
                f"{self.signature!r}"
            )
        return self

    @property
    def detection_part(self) -> str:
        """What the guard's grep pattern must contain."""
        return self.signature_part or default_signature_part(self.signature)


# `Name <email>`: no quotes, angle brackets or control characters inside either part.
_AUTHOR_RE = r"^[^<>\x00-\x1f\x7f\"]{1,100} <[^<>\s\x00-\x1f\x7f\"]{1,100}>$"


class DocsConfig(Section):
    dir: ConfigPath = Field(description="the machine-docs folder of the state files")
    phase: Name = Field("pvcheck", description="phase id in the state files' names")
    precondition_phase: Name = Field(
        "pvfix", description="phase whose STATUS must hold ## DONE (a precondition)"
    )
    freshness_h: float = Field(
        24.0,
        gt=0,
        le=24 * 30,
        description="pvcheck done accepts a review PASS at most this old (and newer than "
        "the claim), in hours",
    )
    done_follows: Literal["latest", "first"] = Field(
        "latest",
        description="latest: a new claim withdraws ## DONE until the review passes it; "
        "first: DONE stays while later runs pass",
    )
    commit: bool = Field(
        False,
        description="commit pvcheck's own files after run, review and done when the folder "
        "is inside a git work tree (never with --no-verify)",
    )
    push: bool = Field(False, description="push those commits too")
    author: str = Field(
        "pvcheck <pvcheck@localhost>",
        pattern=_AUTHOR_RE,
        max_length=200,
        description="author of those commits, Name <email>",
    )
    review_max_kb: int = Field(  # well under MAX_STATE_BYTES
        256,
        ge=4,
        le=4 * 1024,
        description="REVIEW's size bound, in KiB: older entries roll over to "
        "REVIEW-<phase>.archive.md",
    )
    journal_max_kb: int = Field(
        512,
        ge=4,
        le=4 * 1024,
        description="JOURNAL's size bound, in KiB: past it pvcheck writes its full entries to "
        "JOURNAL-<phase>.runs.md and only their headings to JOURNAL (which others write too: "
        "it is never rewritten)",
    )

    @property
    def paths(self) -> DocsPaths:
        return DocsPaths(
            self.dir, self.phase, self.review_max_kb * 1024, self.journal_max_kb * 1024
        )

    @property
    def precondition_status(self) -> Path:
        """The precondition phase's STATUS file, which must contain `## DONE`."""
        return self.paths.precondition_status(self.precondition_phase)


_HOST_RE = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
LabHost = Annotated[str, Field(pattern=_HOST_RE)]


class StandinConfig(Section):
    service: Name = Field(description="the stand-in's swarm service name")
    role: Literal[
        "drone", "dashboard", "bridge", "report", "backups", "socket-proxy", "warm-app", "warm-db"
    ] = Field(description="which control-plane service it stands in for")
    hosts: list[LabHost] = Field(
        default_factory=list,
        description="host names Traefik routes to it; none: a service without a route",
    )


MACHINE_OWN = ("/run", "/var/log", "/var/lib/docker")  # always a lab machine's own


class MachineConfig(Section):
    """A second machine on this one for a two-machine twin (pvcheck.machine): its own network
    and mount namespaces, dockerd, swarm and sshd, reached from here as `ssh <name>`."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")] = Field(
        "cc-ci", description="its ssh Host alias (target.docker_host = ssh://<name>)"
    )
    netns: Annotated[str, Field(pattern=r"^pvcheck-[a-z0-9-]{1,20}$")] = Field(
        "pvcheck-ccci", description="its network namespace"
    )
    link: ipaddress.IPv4Network = Field(
        ipaddress.IPv4Network("169.254.78.0/30"),
        description="the /30 link-local veth link to it: this machine .1, it .2",
    )
    private_dirs: list[ConfigPath] = Field(
        default_factory=list,
        max_length=10,
        description="folders it has its own copy of, as a separate machine would (besides "
        "/run, /var/log and /var/lib/docker, always its own)",
    )

    @field_validator("private_dirs")
    @classmethod
    def _own_folders(cls, dirs: list[Path]) -> list[Path]:
        for d in dirs:
            bad = not d.is_absolute() or ".." in d.parts or len(d.parts) < 3
            if bad or any(d == Path(o) or Path(o) in d.parents for o in MACHINE_OWN):
                raise ValueError(
                    f"{d}: an absolute folder at least two levels deep, outside "
                    + ", ".join(MACHINE_OWN)
                )
        return dirs

    @field_validator("link")
    @classmethod
    def _link_local_30(cls, net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        # Link-local only: no address another machine could have is ever used.
        if net.prefixlen != 30 or not net.is_link_local:
            raise ValueError("must be a /30 inside 169.254.0.0/16")
        # Not where clouds put metadata and DNS (169.254.169.254, .169.253), nor the blocks
        # RFC 3927 reserves: a route to the machine there would take the host's own traffic.
        for reserved in ("169.254.0.0/24", "169.254.169.0/24", "169.254.255.0/24"):
            if net.subnet_of(ipaddress.IPv4Network(reserved)):
                raise ValueError(f"must not be inside {reserved} (reserved, or cloud metadata)")
        return net

    @property
    def here(self) -> str:
        return str(self.link.network_address + 1)

    @property
    def address(self) -> str:
        return str(self.link.network_address + 2)


class LabConfig(Section):
    http_port: int = Field(
        18080, ge=1, le=65535, description="Traefik's HTTP port (below 1024: only in a machine)"
    )
    tls_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="a TLS entrypoint on this port, certificates from the lab's own CA under "
        "state_dir; unset: none",
    )
    tls_domains: list[LabHost] = Field(
        default_factory=list, description="names the TLS certificate from the lab CA covers"
    )
    state_dir: ConfigPath = Field(
        Path("/var/lib/pvcheck-lab/default"),
        description="the lab's own files (its CA and certificates, the Drone stand-in's "
        "token, pid and builds)",
    )
    dockerd_log: ConfigPath = Field(
        Path("/var/log/pvcheck-lab/dockerd.log"),
        description="where a dockerd the lab starts logs (the lab's docker journal)",
    )
    traefik_service: Name = Field("lab-traefik_app", description="the lab's Traefik service name")
    traefik_hosts: list[LabHost] = Field(
        default_factory=lambda: ["traefik.lab.test"],
        description="host names of Traefik's own API route",
    )
    standins: list[StandinConfig] = Field(
        default_factory=list, description="stand-ins for the control-plane services"
    )
    image_aliases: dict[str, Annotated[str, Field(pattern=r"^[a-z0-9/._-]+:[A-Za-z0-9._-]+$")]] = (
        Field(
            default_factory=dict,
            max_length=10,
            description="local tags the target's config names (busybox:1.36) for the lab's "
            "own images: alias -> image",
        )
    )
    harness: ConfigPath | None = Field(None, description="the recipe harness on this host")
    drone_api: bool = Field(
        False,
        description="serve the Drone API stand-in at deploy.drone.url (it runs the harness "
        "for each build)",
    )
    machine: MachineConfig | None = Field(
        None,
        description="build the lab on a second machine in namespaces of this one (the "
        "two-machine cc-ci twin); unset: on this machine's engine",
    )

    @model_validator(mode="after")
    def _low_ports_in_a_machine(self) -> LabConfig:
        # This machine's ports below 1024 belong to its real services; a machine's are its own.
        low = [p for p in (self.http_port, self.tls_port) if p is not None and p < 1024]
        if low and self.machine is None:
            raise ValueError(f"port {low[0]} is below 1024: only a lab.machine may use it")
        # A machine's ssh and sshd configs name files under state_dir, unquoted.
        if self.machine is not None and not re.fullmatch(r"/[A-Za-z0-9._/-]+", str(self.state_dir)):
            raise ValueError("state_dir: with a lab.machine only letters, digits and . _ / -")
        return self

    @field_validator("image_aliases")
    @classmethod
    def _alias_names(cls, value: dict[str, str]) -> dict[str, str]:
        for alias in value:
            if not re.match(r"^[a-z0-9/._-]+:[A-Za-z0-9._-]+$", alias):
                raise ValueError(f"{alias!r} is not an image name:tag")
        return value


class MetricsConfig(Section):
    textfile: ConfigPath | None = Field(
        None,
        description="Prometheus gauges of every run, in node_exporter's textfile format, "
        "written atomically to this .prom file in the textfile collector's folder "
        "(/var/lib/prometheus/node-exporter/pvcheck.prom on Debian); the folder must exist "
        "and, as root, be root's alone; unset: no metrics",
    )

    @field_validator("textfile")
    @classmethod
    def _prom_file(cls, value: Path | None) -> Path | None:
        # node_exporter reads only *.prom files; the run's temp file beside it is not one.
        if value is not None and value.suffix != ".prom":
            raise ValueError(f"{str(value)!r} must end in .prom (node_exporter reads no other)")
        return value


class Config(Section):
    target: TargetConfig = Field(
        TargetConfig(), description="the host verified and how pvcheck reaches its engine"
    )
    network: NetworkConfig = Field(description="the shared overlay network")
    services: ServicesConfig = Field(description="the control plane")
    routes: list[RouteConfig] = Field(
        min_length=1, description="routes through the reverse proxy, checked concurrently"
    )
    http: HttpConfig = Field(HttpConfig(), description="how routes are probed")
    logs: LogsConfig = Field(description="the docker log scanned for the VIP/IPAM errors")
    deploy: DeployConfig | None = Field(
        None, description="the deploy proof: one real recipe deploy that joins the network"
    )
    allocator: AllocatorConfig = Field(
        AllocatorConfig(), description="the allocator reproduction and the forecast"
    )
    guard: GuardConfig | None = Field(None, description="the upgrade procedure's Step-0 guard")
    docs: DocsConfig = Field(description="where the evidence goes (machine-docs)")
    metrics: MetricsConfig = Field(
        MetricsConfig(), description="Prometheus metrics written after every run"
    )
    lab: LabConfig | None = Field(None, description="only in lab configs: the lab's shape")
    source: Path = Field(
        Path("<memory>"), exclude=True, description="the file read (set by pvcheck, not a key)"
    )

    @model_validator(mode="before")
    @classmethod
    def _routes_inherit_http_defaults(cls, raw: Any) -> Any:
        http = raw.get("http") if isinstance(raw, dict) else None
        if not isinstance(http, dict):
            return raw
        defaults = {k: http[k] for k in ("connect_to", "ca_bundle") if http.get(k) is not None}
        if not defaults:
            return raw
        routes = raw.get("routes")
        if isinstance(routes, list):
            raw = {**raw, "routes": [_with_defaults(r, defaults) for r in routes]}
        deploy = raw.get("deploy")
        compose = deploy.get("compose") if isinstance(deploy, dict) else None
        if isinstance(compose, dict) and isinstance(compose.get("route"), dict):
            compose = {**compose, "route": _with_defaults(compose["route"], defaults)}
            raw = {**raw, "deploy": {**deploy, "compose": compose}}
        return raw

    @model_validator(mode="after")
    def _route_names_unique(self) -> Config:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique; repeated: {', '.join(dupes)}")
        return self


def _with_defaults(route: Any, defaults: dict[str, Any]) -> Any:
    if not isinstance(route, dict):
        return route
    return {**{k: v for k, v in defaults.items() if route.get(k) is None}, **route}


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _find_secret(raw: Any, loc: tuple[int | str, ...] = ()) -> str | None:
    if isinstance(raw, dict):
        for key, value in raw.items():
            if _SECRET_KEY_RE.search(str(key)) and isinstance(value, str) and value:
                return _field_path((*loc, key))
            found = _find_secret(value, (*loc, key))
            if found:
                return found
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            found = _find_secret(value, (*loc, i))
            if found:
                return found
    return None


Origins = dict[tuple[int | str, ...], Path]
MAX_BASE_DEPTH = 8


def parse_config(raw: dict[str, Any], source: Path, origins: Origins | None = None) -> Config:
    """Validate an already-parsed TOML document; raises ConfigError naming the first bad field
    and the file that wrote it (`origins`: key path -> file, for configs built on a base)."""
    secret_at = _find_secret(raw)
    if secret_at:
        raise ConfigError(
            str(source),
            secret_at,
            "a secret is written in the file; name an environment variable (token_env) "
            "or a Prefect Secret block (token_block) instead",
        )
    try:
        return Config.model_validate(
            {**raw, "source": source}, context={"base": source.parent.resolve()}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        where = _origin(origins or {}, tuple(err["loc"])) or source
        raise ConfigError(str(where), _field_path(err["loc"]), msg) from None


def _origin(origins: Origins, loc: tuple[int | str, ...]) -> Path | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return None


MAX_CONFIG_BYTES = 1024 * 1024


def _read_toml(source: Path) -> dict[str, Any]:
    # As root, a config someone else can change would run their commands (logs.command,
    # deploy.command.argv) as root: refused, like a FIFO or a huge file.
    try:
        for path, what in ((source, "the config file"), (source.parent, "its folder")):
            require_root_only(path.resolve(), what)
        data = read_capped(source, MAX_CONFIG_BYTES, follow=True)
        if data is None:
            raise ConfigError(str(source), "", "file not found")
        text = data.decode("utf-8")
    except StateFileError as exc:
        raise ConfigError(str(source), "", exc.problem) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(source), "", f"cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "", f"malformed TOML: {exc}") from None


def _load_layers(source: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Origins]:
    """The merged document of a config and the bases it names, with each value's file.

    Paths are made absolute against the file that wrote them before merging, so a base's
    relative paths keep meaning what they meant there."""
    raw = _read_toml(source)
    secret_at = _find_secret(raw)
    if secret_at:
        parse_config(raw, source)  # raises, naming this file
    base_value = raw.pop("base", None)
    merged: dict[str, Any] = {}
    origins: Origins = {}
    if base_value is not None:
        if not isinstance(base_value, str) or not base_value or "\0" in base_value:
            raise ConfigError(str(source), "base", "must be the path of another config file")
        base = (source.parent / base_value).resolve()
        if base in chain or base == source.resolve():
            raise ConfigError(str(source), "base", f"{base} is already in the chain (a cycle)")
        if len(chain) >= MAX_BASE_DEPTH:
            raise ConfigError(str(source), "base", f"more than {MAX_BASE_DEPTH} nested bases")
        merged, origins = _load_layers(base, (*chain, source.resolve()))
    raw = _absolutize(raw, Config, source.parent.resolve())
    for key_path in _leaves(raw):
        origins = {k: v for k, v in origins.items() if k[: len(key_path)] != key_path}
        origins[key_path] = source
    return _merge(merged, raw), origins


def _leaves(raw: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every value that is not a table (arrays are values: they replace)."""
    out: list[tuple[str, ...]] = []
    for key, value in raw.items():
        if isinstance(value, dict):
            out += _leaves(value, (*prefix, key)) or [(*prefix, key)]
        else:
            out.append((*prefix, key))
    return out


def _is_config_path(metadata: Any) -> bool:
    return any(isinstance(m, AfterValidator) and m.func is _resolve_path for m in metadata)


def _absolutize(value: Any, tp: Any, base: Path, metadata: Any = ()) -> Any:
    """Pure: the raw value with every relative ConfigPath made absolute against `base`."""
    if _is_config_path(metadata) and isinstance(value, str) and value:
        return value if Path(value).is_absolute() else str((base / value).resolve())
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _absolutize(value, args[0], base, args[1:])
    if origin in (Union, types.UnionType):
        for arg in args:
            value = _absolutize(value, arg, base)
        return value
    if origin is list and isinstance(value, list):
        return [_absolutize(v, args[0], base) for v in value]
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(value, dict):
        fields = tp.model_fields
        return {
            k: _absolutize(v, fields[k].annotation, base, fields[k].metadata) if k in fields else v
            for k, v in value.items()
        }
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a config file (and the bases it names), merge overrides ({"allocator":
    {"batch": 3}}) into it, and validate it."""
    source = Path(path)
    raw, origins = _load_layers(source)
    return parse_config(_merge(raw, overrides or {}), source, origins)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
