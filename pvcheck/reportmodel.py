"""The run's JSON report as one pydantic model: REPORT-pvcheck.json and `pvcheck run --json`
are its dump (pvcheck.report), the review reads them back through it (pvcheck.review), and
`pvcheck report-schema` prints its JSON schema.

The values a review decides on or writes into REVIEW are typed strictly, so a report pvcheck
did not write is refused naming the field: names, counts (non-negative ints, never a bool or
a float), the run's log window (UTC timestamps as pvcheck writes them), the subnet and the
probe services' object IDs. Reading stays open to reports of older versions and to what
they do not hold: every key but `run_id` has a default, unknown keys are ignored, and an
object part of another kind (`"network": 5`) reads as absent, as the hand reader had it.
Writing (`ReportDocument.written`) is closed: a key the model does not know is refused, not
dropped, and so is a value the review would refuse.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from pvcheck.capacity import Method
from pvcheck.config import RUN_ID_PATTERN
from pvcheck.records import Gate, Status, Verdict, parse_ts

_T = TypeVar("_T")

# A name as docker and pvcheck write them: nothing that could end a Markdown line or span.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
OBJECT_ID_PATTERN = r"^[a-z0-9]{1,64}$"  # a swarm object ID
STAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"  # records.TS_FORMAT
MAX_PROBE_IDS = 64


def _stamp(value: str) -> str:
    if parse_ts(value) is None:
        raise ValueError(f"{value[:80]!r} is not a UTC timestamp")
    return value


def _subnet(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value[:80]!r} is not a subnet") from None
    return value


def _writing(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("writing"))


def _object_or_none(value: Any, info: ValidationInfo) -> Any:
    return value if _writing(info) or isinstance(value, dict | BaseModel) else None


def _object_or_empty(value: Any, info: ValidationInfo) -> Any:
    return value if _writing(info) or isinstance(value, dict | BaseModel) else {}


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Count = Annotated[int, Field(ge=0)]
Stamp = Annotated[str, Field(pattern=STAMP_PATTERN), AfterValidator(_stamp)]
Subnet = Annotated[str, Field(description="in CIDR notation"), AfterValidator(_subnet)]
ObjectId = Annotated[str, Field(pattern=OBJECT_ID_PATTERN)]
# Enum values arrive as their strings (JSON, Check.as_dict).
GateValue = Annotated[Gate, Strict(False)]
StatusValue = Annotated[Status, Strict(False)]
# An optional object part (null when the run had none); read, another kind is absent.
Part = Annotated[_T | None, BeforeValidator(_object_or_none)]
# An object part always written, whose keys all have defaults; read, another kind is empty.
Section = Annotated[_T, BeforeValidator(_object_or_empty)]


class _Model(BaseModel):
    # strict: no coercion (a count is an int, not "5", 5.0 or true); unknown keys ignored
    # when reading, refused when writing (a key the model does not know would be dropped).
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _known_keys_when_writing(cls, data: Any, info: ValidationInfo) -> Any:
        if _writing(info) and isinstance(data, dict):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"not in the report's model: {', '.join(unknown)}")
        return data


class GateSummary(_Model):
    """A gate as the run judged it."""

    status: StatusValue
    title: str
    checks: Count = Field(description="how many checks the gate holds")


class CheckRecord(_Model):
    """One judged check (records.Check)."""

    id: str
    gate: GateValue
    status: StatusValue
    expected: str
    found: str
    detail: str = ""
    duration_s: float = 0.0
    not_applicable: bool = False


class NetworkPart(_Model):
    """The overlay network (hostfacts.NetworkFacts): its shape and endpoints."""

    name: str
    subnet: Subnet
    driver: str
    capacity: Count
    vips: Count
    task_ips: Count
    lb_endpoints: Count
    containers: Count = Field(description="attached containers that are not swarm tasks")
    services: list[str] = []
    per_service: Part[dict[Name, Count]] = Field(
        None, description="addresses per service name; absent in reports of older versions"
    )
    used: Count = Field(description="every endpoint: VIPs, task IPs, LB endpoints, containers")
    headroom_pct: float


class ServicePart(_Model):
    """A control-plane service (hostfacts.ServiceFacts)."""

    name: Name
    exists: bool
    running: Count
    desired: Count
    task_states: dict[str, int] = {}
    restarts: int = 0
    healthy: bool = False


class HostFactsPart(_Model):
    """The host's facts at one moment (hostfacts.HostFacts)."""

    taken_at: str = ""
    network: Part[NetworkPart] = None
    services: list[ServicePart] = []
    stacks: dict[str, int] = {}


class FactsPart(_Model):
    before: Part[HostFactsPart] = None
    after: Part[HostFactsPart] = None


class LogScanPart(_Model):
    """A log window's scan (logscan.LogScan)."""

    source: str = ""
    since: Stamp
    until: Stamp
    counts: dict[str, int] = {}
    lines: list[str] = []
    truncated: bool = False
    error: str | None = None
    probe_ids: Annotated[list[ObjectId], Field(max_length=MAX_PROBE_IDS)] = Field(
        [], description="pvcheck's probe services whose VIP lines are in the window"
    )


class AdoptedPart(_Model):
    """A finished harness run taken as the deploy proof (seams.AdoptedRun)."""

    run: Annotated[str, Field(pattern=RUN_ID_PATTERN)]
    recipe: Annotated[str, Field(pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    finished: Annotated[str, Field(pattern=f"^$|{STAMP_PATTERN}")]
    results: Annotated[str, Field(max_length=5000)] = Field(description="how it was read")
    link: Annotated[str, Field(pattern=r"^$|^https?://\S+$", max_length=2100)]
    digest: Annotated[str, Field(pattern=r"^$|^[0-9a-f]{64}$")] = Field(
        "", description="sha256 of its results.json as the run read it"
    )


class DeployPart(_Model):
    stacks: list[Name] = Field([], description="the stacks the deploy proof used")
    adopted: Part[AdoptedPart] = Field(
        None, description="the finished harness run adopted as the proof (no deploy started)"
    )


class DocsPart(_Model):
    """What the protocol did with machine-docs (report.DocsOutcome)."""

    vetoes: list[str] = []
    withdrawn: str | None = None
    committed: str | None = None
    status_digests: dict[
        Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")],
        Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")],
    ] = Field({}, max_length=20, description="STATUS section -> sha256 of its text as written")


class RoundPart(_Model):
    """One round of the allocator reproduction (allocator.RoundFigures)."""

    round: int
    stacks: int
    baseline: dict[str, int]
    peak: dict[str, int]
    after: dict[str, int]
    allocated: bool
    settled: bool
    seconds: float
    leaked_total: int = 0
    others: int = 0
    networks_orphaned: list[str] = []
    networks_left: list[str] = []
    rm_errors: list[str] = []
    leaked: dict[str, int]


class HeldCountPart(_Model):
    """A network's addresses as the allocator holds them (capacity.HeldCount)."""

    network: str
    capacity: int
    endpoints: int
    free: int
    exact: bool
    method: Method
    held: int
    leaked: int | None
    headroom_pct: float


class ForecastPart(_Model):
    """Days until a network runs out (allocator.Forecast)."""

    network: str
    free: int
    free_exact: bool
    leak_per_day: float | None
    days: float | None


class AllocatorPart(_Model):
    """The allocator reproduction (allocator.AllocatorResult). The figures a review holds
    to the run's history record (records.FIGURES) are counts."""

    network: str
    peak: Count = 0  # absent in reports of older versions
    capacity: int
    used_before: Count
    used_after: Count
    leaked_total: Count
    leak_per_round: float
    headroom_before_pct: float
    headroom_after_pct: float
    projected_rounds: int | None
    started_at: str
    finished_at: str
    rounds: list[RoundPart]
    scratch: str = ""
    scratch_left: bool = False
    removal: str = "concurrent"
    removed_tasks: int = 0
    engine_leaked: int | None = None
    leak_per_removal: float | None = None
    scratch_count: Part[HeldCountPart] = None
    shared_before: Part[HeldCountPart] = None
    shared_after: Part[HeldCountPart] = None
    ingress: Part[HeldCountPart] = None
    probe_s: float = 0.0
    removals_per_day: float = 0.0
    rate_source: str = "config"
    forecast: list[ForecastPart] = []
    engine_version: str = ""
    advice: str = ""


class ReportDocument(_Model):
    """A pvcheck run's JSON report (REPORT-pvcheck.json, `pvcheck run --json`)."""

    model_config = ConfigDict(title="pvcheck run report")

    verdict: Annotated[Verdict, Strict(False)] | None = None
    incomplete_reason: str = ""
    run_id: Name
    target: str = ""
    config: str = Field("", description="the config file the run used")
    started_at: str = ""
    finished_at: str = ""
    gates: dict[GateValue, GateSummary] = {}
    stages: dict[str, str] = Field({}, description="stage -> how it ended")
    checks: list[CheckRecord] = []
    facts: Section[FactsPart] = Field(default_factory=FactsPart)
    logs: Part[LogScanPart] = Field(None, description="the window before the run")
    evidence: dict[str, str] = {}
    target_via: str = ""
    run_logs: Part[LogScanPart] = Field(None, description="the run's own log window")
    deploy: Section[DeployPart] = Field(default_factory=DeployPart)
    docs: Section[DocsPart] = Field(default_factory=DocsPart)
    allocator: Part[AllocatorPart] = Field(
        None, description="the allocator reproduction; absent when it did not run"
    )

    @classmethod
    def written(cls, parts: dict[str, Any]) -> ReportDocument:
        """The report as the writer makes it (pvcheck.report): every key one of the model's
        and every part of its kind, or a ValidationError naming the field."""
        return cls.model_validate(parts, context={"writing": True})

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.allocator is None:  # written only when the reproduction ran
            out.pop("allocator", None)
        return out


def report_schema() -> dict[str, Any]:
    """The JSON schema of the report, as `pvcheck report-schema` prints it."""
    return ReportDocument.model_json_schema()


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def field_path(loc: Sequence[int | str]) -> str:
    """A validation error's location, dotted (`facts.after.network.subnet`); a key that is
    not a plain word is quoted, so a hostile key never reaches a message as it is."""
    out = ""
    for part in loc:
        if part == "[key]":
            out += "[key]"
        elif isinstance(part, int) or _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{part[:40]!r}]"
    return out or "(the report itself)"


def refusal(exc: ValidationError) -> tuple[str, str]:
    """The first error of a validation: the field (dotted) and why, the input shown
    bounded and quoted."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    why = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] != "value_error" and "input" in first:
        given = first["input"]
        shown = repr(given[:80]) if isinstance(given, str) else repr(given)[:80]
        why = f"{shown}: {why[:1].lower()}{why[1:]}"
    if len(errors) > 1:
        why += f" (and {len(errors) - 1} more)"
    return field_path(first["loc"]), why
