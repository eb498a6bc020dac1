"""The validated TOML config: one file describes the target host, its checks and the run's caps.

Every field is documented in README.md. Bad input raises ConfigError naming file and field.
Relative paths are resolved against the config file's folder.
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
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pvcheck.errors import ConfigError, StateFileError
from pvcheck.records import VIP_SIGNATURE
from pvcheck.safeio import read_capped, require_root_only
from pvcheck.stackfile import load_compose, read_env_file, unset_variables
from pvcheck.statefiles import DocsPaths

# The built-in lab's config: the default of every command and flow parameter.
LAB_CONFIG = Path(__file__).resolve().parent.parent / "lab" / "pvcheck.toml"

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
Tier = Literal["install", "upgrade", "backup_restore", "functional"]
DEFAULT_TIERS: tuple[Tier, ...] = ("install", "upgrade")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SshConfig(Section):
    """How an ssh:// target is reached (the system ssh client; host keys always verified)."""

    identity_file: ConfigPath | None = None
    known_hosts: ConfigPath | None = None  # None: ssh's own ~/.ssh/known_hosts
    connect_timeout_s: float = Field(10.0, gt=0, le=120)
    docker_socket: str = Field("/var/run/docker.sock", pattern=r"^/[A-Za-z0-9._/-]+$")


class TargetConfig(Section):
    name: Name = "local"
    docker_host: str = "unix:///var/run/docker.sock"
    timeout_s: float = Field(10.0, gt=0, le=300)
    api_attempts: int = Field(3, ge=1, le=10)
    # How long docker calls ride out an engine that stopped answering mid-run (a restart).
    reconnect_s: float = Field(60.0, ge=0, le=600)
    # Where the host lock and the registry of started runs live (on the machine pvcheck runs on).
    state_dir: ConfigPath = Path("/var/lib/pvcheck")
    ssh: SshConfig = SshConfig()

    @field_validator("docker_host")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(unix|ssh|tcp)://\S+$", value):
            raise ValueError(f"{value!r} must start with unix://, ssh:// or tcp://")
        if value.startswith("ssh://") and not SSH_URL.match(value):
            raise ValueError(f"{value!r} must be ssh://[user@]host[:port]")
        return value


class NetworkConfig(Section):
    name: Name = "proxy"
    subnet: Subnet
    driver: Name = "overlay"
    headroom_warn_pct: float = Field(25.0, ge=0, le=100)


class ServicesConfig(Section):
    control_plane: list[Name] = Field(min_length=1)
    restart_window_h: float = Field(24.0, gt=0, le=24 * 30)


class RouteConfig(Section):
    name: Name
    url: Url
    connect_to: HostPort | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200], min_length=1
    )
    body_contains: str | None = Field(None, max_length=1024)
    verify_tls: bool = True
    # A CA bundle (PEM) to verify this route's certificate with, instead of the system's.
    ca_bundle: ConfigPath | None = None
    core: bool = True
    # "here": from where pvcheck runs; "host": from the target host itself (ssh host curl).
    check_from: Literal["here", "host"] = "here"


class HttpConfig(Section):
    timeout_s: float = Field(5.0, gt=0, le=120)
    attempts: int = Field(3, ge=1, le=10)
    backoff_s: float = Field(0.5, ge=0, le=30)
    concurrency: int = Field(16, ge=1, le=64)
    # Defaults for every route that does not set its own: where to connect (the host's own
    # Traefik) and which CA to trust. An overlay config moves all routes by changing these.
    connect_to: HostPort | None = None
    ca_bundle: ConfigPath | None = None


class LogsConfig(Section):
    source: Literal["journald", "file", "command"]
    unit: Name = "docker"
    path: ConfigPath | None = None
    command: list[str] | None = None
    window_h: float = Field(26.0, gt=0, le=24 * 30)
    max_lines: int = Field(50, ge=1, le=10_000)

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

    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$", max_length=200)
    body: str = Field(min_length=1, max_length=500)


class ComposeDriverConfig(Section):
    file: ConfigPath
    # The app's variables, as abra reads them (`KEY=VALUE` lines); STACK_NAME and DOMAIN
    # are set by pvcheck.
    env_file: ConfigPath | None = None
    domain: str | None = Field(None, pattern=_DOMAIN_RE)
    # The upgrade: the same recipe with these variables changed (a new version), and/or
    # another compose file; upgrade_body is text the upgraded app's page shows.
    upgrade_file: ConfigPath | None = None
    upgrade_env: dict[str, str] = Field(default_factory=dict, max_length=50)
    upgrade_body: str | None = Field(None, max_length=500)
    route: RouteConfig
    backup_restore: str | None = Field(
        None, description="why backup/restore does not apply; None means not declared"
    )
    # Where the app serves its backed-up path (the lab recipe: /data/); unset, the restored
    # marker is read inside the app instead of through the route.
    backup_served_at: str | None = Field(None, pattern=r"^/[A-Za-z0-9._~/-]*$", max_length=200)
    functional: list[FunctionalCheck] = Field(default_factory=list, max_length=20)

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
    argv: list[str] = Field(min_length=1)
    results: ConfigPath
    timeout_s: float = Field(1800.0, gt=0, le=6 * 3600)


class DroneDriverConfig(Section):
    url: Url
    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    branch: str = Field("main", pattern=r"^[A-Za-z0-9_./-]+$")
    token_env: str = Field("DRONE_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    token_block: Name | None = None
    recipe_param: Name = "RECIPE"
    timeout_s: float = Field(3600.0, gt=0, le=6 * 3600)
    poll_s: float = Field(10.0, gt=0, le=300)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, Field(max_length=500), AfterValidator(_regex)]


class ActiveRunsConfig(Section):
    folder: ConfigPath | None = None
    # Stacks of another harness run; stacks holding a control-plane service never count.
    # Unset: deploy.stack_pattern.
    stack_pattern: Regex | None = None
    # Files whose existence means a sweep (e.g. the weekly upgrade run) is in progress.
    markers: list[ConfigPath] = Field(default_factory=list, max_length=20)
    # Ask the Drone API (deploy.drone) for running builds too.
    drone_builds: bool = True
    wait_s: float = Field(300.0, ge=0, le=6 * 3600)


class DeployConfig(Section):
    driver: Literal["compose", "command", "drone"]
    recipe: Name
    tiers: list[Tier] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1)
    # The stack an external harness deploys the recipe as (command/drone drivers), when it is
    # fixed; harnesses that generate names (cc-ci: `<4>-<6 hex>_ci_commoninternet_net`) are
    # matched by stack_pattern. Attachment sampling and the teardown check watch that stack.
    stack: Name | None = None
    stack_pattern: Regex | None = None
    converge_timeout_s: float = Field(120.0, gt=0, le=3600)
    compose: ComposeDriverConfig | None = None
    command: CommandDriverConfig | None = None
    drone: DroneDriverConfig | None = None
    active_runs: ActiveRunsConfig = ActiveRunsConfig()

    @model_validator(mode="after")
    def _driver_has_its_section(self) -> DeployConfig:
        if getattr(self, self.driver) is None:
            raise ValueError(f"driver {self.driver!r} needs a [deploy.{self.driver}] section")
        return self


class AllocatorConfig(Section):
    batch: int = Field(5, ge=1, le=MAX_ALLOCATOR_BATCH)
    concurrency: int = Field(5, ge=1, le=MAX_ALLOCATOR_CONCURRENCY)
    rounds: int = Field(1, ge=1, le=MAX_ALLOCATOR_ROUNDS)
    image: str = Field("local/busybox:1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_./:@-]{0,200}$")
    leak_tolerance: int = Field(
        2, ge=0, description="leaked addresses per round that still pass (any leak is reported)"
    )
    headroom_floor_pct: float = Field(50.0, ge=0, le=100)
    settle_timeout_s: float = Field(90.0, gt=0, le=1800)
    # The leak rounds run on a throwaway overlay of this subnet that plays the shared
    # network's role (external to every throwaway stack), never on the real one: what the
    # race leaks dies with that network (moby#37338; swarmkit#3230).
    scratch_subnet: Subnet = "10.254.0.0/24"
    # Published ports take ingress addresses, which leak the same way: off unless asked for
    # (and then only while ingress stays above the floor).
    publish_ports: bool = False
    # Throwaways stop as real apps do: SIGTERM, then this grace before SIGKILL.
    stop_grace_s: float = Field(10.0, ge=1, le=120)
    # "concurrent": every stack removed at once by `docker stack rm` (the incident's
    # pattern); "services-first": services removed, their tasks waited for, then the stacks
    # (docker/cli#7304's mitigation).
    removal: Literal["concurrent", "services-first"] = "concurrent"
    # After the rounds, fill the scratch network until the allocator refuses: the
    # allocator's own count of what leaked, on engines without IPAM status (API < 1.52).
    capacity_probe: bool = True
    # Ingress headroom on engines without IPAM status: create at most this many minimal
    # published-port services (never more than the floor needs), then remove them.
    ingress_probe_max: int = Field(256, ge=0, le=1024)
    # GC-race lines (`key modified`, `network … remove failed`) in the run's window: a
    # warning, and a failure from this many on (None: never a failure).
    gc_race_fail: int | None = Field(None, ge=1)
    # M2 fails when either network would run out sooner than this at the measured leak.
    horizon_days: float = Field(30.0, gt=0, le=3650)
    # Task removals per day on the host, for the forecast: counted from the harness's run
    # folders (entries changed in the last 7 days) when `runs_dir` is set, else this figure.
    runs_dir: ConfigPath | None = None
    removals_per_day: float = Field(20.0, ge=0, le=100000)
    tasks_per_run: int = Field(2, ge=1, le=1000)
    # Published-port task removals a day: what leaks on ingress (recipes behind a reverse
    # proxy publish none).
    ingress_removals_per_day: float = Field(0.0, ge=0, le=100000)

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
    file: ConfigPath
    section: str = Field("0", min_length=1, max_length=200)
    signature: str = Field(VIP_SIGNATURE, min_length=10, max_length=500)
    # What the Step-0 grep's pattern must contain (a part of `signature`); unset: see above.
    signature_part: str | None = Field(None, min_length=10, max_length=500)
    detect_command: list[str] | None = None

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
    dir: ConfigPath
    phase: Name = "pvcheck"
    precondition_phase: Name = "pvfix"
    # `pvcheck done` accepts a review PASS at most this old (and newer than the claim).
    freshness_h: float = Field(24.0, gt=0, le=24 * 30)
    # "latest": a new claim withdraws `## DONE` until the review passes it (DONE always
    # speaks for the newest evidence); "first": DONE stays while later runs pass.
    done_follows: Literal["latest", "first"] = "latest"
    # Commit pvcheck's own files when the folder is inside a git work tree (never pushed
    # unless push = true; never with --no-verify).
    commit: bool = False
    push: bool = False
    author: str = Field("pvcheck <pvcheck@localhost>", pattern=_AUTHOR_RE, max_length=200)
    # REVIEW's size bound: older entries roll over to REVIEW-<phase>.archive.md.
    review_max_kb: int = Field(256, ge=4, le=4 * 1024)  # well under MAX_STATE_BYTES

    @property
    def paths(self) -> DocsPaths:
        return DocsPaths(self.dir, self.phase, self.review_max_kb * 1024)

    @property
    def precondition_status(self) -> Path:
        """The precondition phase's STATUS file, which must contain `## DONE`."""
        return self.paths.precondition_status(self.precondition_phase)


_HOST_RE = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
LabHost = Annotated[str, Field(pattern=_HOST_RE)]


class StandinConfig(Section):
    service: Name
    role: Literal["drone", "dashboard", "bridge", "report", "backups", "socket-proxy"]
    hosts: list[LabHost] = Field(default_factory=list)  # none: a service without a route


class LabConfig(Section):
    http_port: int = Field(18080, ge=1024, le=65535)
    # A TLS entrypoint (certificates from the lab's own CA under state_dir) on this port.
    tls_port: int | None = Field(None, ge=1024, le=65535)
    tls_domains: list[LabHost] = Field(default_factory=list)
    state_dir: ConfigPath = Path("/var/lib/pvcheck-lab/default")
    dockerd_log: ConfigPath = Path("/var/log/pvcheck-lab/dockerd.log")
    traefik_service: Name = "lab-traefik_app"
    traefik_hosts: list[LabHost] = Field(default_factory=lambda: ["traefik.lab.test"])
    standins: list[StandinConfig] = Field(default_factory=list)
    # Local tags the target's config names (`busybox:1.36`) for the lab's own images.
    image_aliases: dict[str, Annotated[str, Field(pattern=r"^[a-z0-9/._-]+:[A-Za-z0-9._-]+$")]] = (
        Field(default_factory=dict, max_length=10)
    )
    # The recipe harness on this host, and whether to serve the Drone API stand-in at
    # deploy.drone.url (it runs that harness for each build).
    harness: ConfigPath | None = None
    drone_api: bool = False

    @field_validator("image_aliases")
    @classmethod
    def _alias_names(cls, value: dict[str, str]) -> dict[str, str]:
        for alias in value:
            if not re.match(r"^[a-z0-9/._-]+:[A-Za-z0-9._-]+$", alias):
                raise ValueError(f"{alias!r} is not an image name:tag")
        return value


class Config(Section):
    target: TargetConfig = TargetConfig()
    network: NetworkConfig
    services: ServicesConfig
    routes: list[RouteConfig] = Field(min_length=1)
    http: HttpConfig = HttpConfig()
    logs: LogsConfig
    deploy: DeployConfig | None = None
    allocator: AllocatorConfig = AllocatorConfig()
    guard: GuardConfig | None = None
    docs: DocsConfig
    lab: LabConfig | None = None
    source: Path = Field(Path("<memory>"), exclude=True)

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
