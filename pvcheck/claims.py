"""Gate claims: WHAT is claimed and HOW a reviewer re-verifies it with cold commands.

Pure functions of the config and the run report. Every value that comes from the config is
shell-quoted, so a pasted command does what it says and nothing else.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pvcheck.allocator import engine_leak_text, forecasts
from pvcheck.config import Config, RouteConfig
from pvcheck.hostfacts import NetworkFacts
from pvcheck.hosts import host_for
from pvcheck.records import GATES, VIP_SIGNATURE, Gate, parse_ts
from pvcheck.report import Report
from pvcheck.routes import curl_argv
from pvcheck.seams import HostCommands
from pvcheck.statefiles import repo_root
from pvcheck.swarm import LABEL_RUN

q = shlex.quote


@dataclass(frozen=True)
class ColdCommand:
    """A command a reviewer pastes, and what it must print."""

    command: str
    expected: str
    exact: bool = True  # False: `expected` describes the output for a person to judge
    # The command as the target host runs it (`command` is then `ssh HOST '<remote>'`): the
    # review runs it through pvcheck's own ssh options, never by pasting into a shell.
    remote: str | None = None
    # Where it runs: the docs repository's root when it names a file there by a relative
    # path (so it pastes from a fresh clone of that repository).
    cwd: str | None = None


def doc_ref(cfg: Config, path: Path) -> tuple[str, str | None]:
    """How a HOW command names a local file: relative to the root of the docs repository
    when it lies inside it (with that root as the working folder), else by its path."""
    root = repo_root(cfg.docs.dir)
    if root is not None and path.is_relative_to(root):
        return q(str(path.relative_to(root))), str(root)
    return q(str(path)), None


def host_command(
    where: Config | HostCommands, inner: str, expected: str, exact: bool = True
) -> ColdCommand:
    """A cold command that runs on the target host (over ssh when it is remote)."""
    host = host_for(where.target) if isinstance(where, Config) else where
    return ColdCommand(host.how(inner), expected, exact, inner if host.remote else None)


@dataclass(frozen=True)
class Claim:
    gate: Gate
    what: list[str]
    commands: list[ColdCommand] = field(default_factory=list)

    @property
    def title(self) -> str:
        return GATES[self.gate]


def curl_command(route: RouteConfig) -> str:
    return " ".join(q(p) for p in curl_argv(route))


def route_command(host: HostCommands, route: RouteConfig) -> str:
    """The route's curl, run from here or (check_from = "host") on the target host."""
    return route_cold_command(host, route).command


def route_cold_command(host: HostCommands, route: RouteConfig) -> ColdCommand:
    expected = "/".join(map(str, route.expect_status))
    if route.check_from == "host":
        return host_command(host, curl_command(route), expected)
    return ColdCommand(curl_command(route), expected)


def m1_claim(cfg: Config) -> Claim:
    pvfix, cwd = doc_ref(cfg, cfg.docs.precondition_status)
    net = q(cfg.network.name)
    names = "|".join(re.escape(s) for s in cfg.services.control_plane)
    commands = [
        ColdCommand(f"grep -x '## DONE' {pvfix}", "## DONE", cwd=cwd),
        host_command(
            cfg,
            (
                f"docker network inspect {net} --format '{{{{.Driver}}}} "
                f"{{{{(index .IPAM.Config 0).Subnet}}}}'"
            ),
            f"{cfg.network.driver} {cfg.network.subnet}",
        ),
        host_command(
            cfg,
            (
                f"docker network inspect --verbose {net} --format '{{{{range $k, $v := "
                ".Services}}{{$k}} {{$v.VIP}} {{len $v.Tasks}}{{println}}{{end}}'"
            ),
            "one line per service on the network: name, VIP, task count",
            exact=False,
        ),
        host_command(
            cfg,
            (
                "docker service ls --format '{{.Name}} {{.Replicas}}' | "
                f"grep -E {q(f'^({names}) ')}"
            ),
            "every control-plane service with N/N replicas (N > 0)",
            exact=False,
        ),
        *(route_cold_command(host_for(cfg.target), r) for r in cfg.routes),
    ]
    what = [
        f"phase `{cfg.docs.precondition_phase}` is done (`## DONE` in its STATUS file)",
        f"network `{cfg.network.name}` ({cfg.network.driver}) has subnet `{cfg.network.subnet}`",
        f"all {len(cfg.services.control_plane)} control-plane services run their desired "
        "replicas, before and after the run",
        f"all {len(cfg.routes)} routes answer as expected through the reverse proxy",
    ]
    return Claim(Gate.M1, what, commands)


# A swarm object ID, as the engine prints it: the only probe names that reach a shell line.
_OBJECT_ID = re.compile(r"^[a-z0-9]{1,64}$")


def _log_window_command(cfg: Config, since: str, until: str, ours: tuple[str, ...] = ()) -> str:
    for stamp in (since, until):  # only pvcheck's own UTC timestamps reach a shell line
        if parse_ts(stamp) is None:
            raise ValueError(f"not a UTC timestamp: {stamp!r}")
    grep = f"grep -F {q(VIP_SIGNATURE)}"
    # The run's own capacity probe met the allocator's refusal: its line names the probe
    # service, and is the measurement, not the incident.
    if not all(_OBJECT_ID.match(sid) for sid in ours):
        raise ValueError(f"not service IDs: {ours!r}")
    mine = (" | grep -v -F " + " ".join(f"-e {sid}" for sid in ours)) if ours else ""
    if cfg.logs.source == "journald":
        since_arg = q(since.replace("T", " ").rstrip("Z") + " UTC")
        until_arg = q(until.replace("T", " ").rstrip("Z") + " UTC")
        unit = q(cfg.logs.unit)
        return (
            f"journalctl -u {unit} --since {since_arg} --until {until_arg} | {grep}{mine} | wc -l"
        )
    if cfg.logs.source == "file":
        # logrus writes time="...": field 2 when split on quotes; compare as text, to the second.
        # The bounds are awk variables, never program text.
        bounds = f"-v s={q(since.rstrip('Z'))} -v u={q(until.rstrip('Z'))}"
        window = '$2 >= s && $2 <= u "~"'
        return f"{grep} {q(str(cfg.logs.path))}{mine} | awk -F'\"' {bounds} {q(window)} | wc -l"
    return f"{' '.join(q(a) for a in cfg.logs.command or [])} | {grep}{mine} | wc -l"


def residue_commands(cfg: Config, run_id: str) -> list[ColdCommand]:
    """What a run must leave behind: nothing carrying its label, no throwaway stack."""
    label = q(f"{LABEL_RUN}={run_id}")
    return [
        host_command(cfg, "docker stack ls --format '{{.Name}}' | grep -c '^pvc-'", "0"),
        *(
            host_command(cfg, f"docker {kind} ls -q --filter label={label} | wc -l", "0")
            for kind in ("service", "network", "volume", "config", "secret")
        ),
        host_command(cfg, f"docker ps -a -q --filter label={label} | wc -l", "0"),
    ]


def m2_commands(
    cfg: Config,
    run_id: str,
    window: tuple[str, str] | None,
    after: NetworkFacts | None = None,
    ours: tuple[str, ...] = (),
    adopted: str = "",
) -> list[ColdCommand]:
    """M2's HOW commands for a run: residue by its label, the network's counts, the docker
    log over the run's own window, the guard's lines. The review regenerates them from the
    run's JSON report and runs every one."""
    net = q(cfg.network.name)
    commands = [
        *residue_commands(cfg, run_id),
        host_command(
            cfg,
            (
                f"docker network inspect --verbose {net} --format '{{{{range .Services}}}}"
                "{{if .VIP}}vip{{println}}{{end}}{{range .Tasks}}task{{println}}{{end}}{{end}}'"
                " | sort | uniq -c"
            ),
            f"{after.task_ips} task, {after.vips} vip (as after the run)"
            if after
            else "task and vip counts as after the run",
            exact=False,
        ),
    ]
    if adopted and cfg.deploy is not None and cfg.deploy.adopt is not None:
        results = q(str(cfg.deploy.adopt.results_of(adopted)))
        commands.append(
            host_command(
                cfg,
                f"cat {results}",
                f"harness run {adopted}'s results: every required rung pass, "
                "flags.clean_teardown true",
                exact=False,
            )
        )
    if window is not None:
        commands.append(host_command(cfg, _log_window_command(cfg, *window, ours), "0"))
    if cfg.guard is not None:
        guard, cwd = doc_ref(cfg, cfg.guard.file)
        commands.append(
            ColdCommand(
                f"grep -n -e 'allocating VIP' -e 'restart docker' {guard}",
                f"the detection and the recovery lines of section {cfg.guard.section!r}",
                exact=False,
                cwd=cwd,
            )
        )
    return commands


def m2_claim(report: Report, cfg: Config) -> Claim:
    """The M2 claim carries this run's numbers; commands check what the run left behind."""
    after = report.facts_after.network if report.facts_after else None
    logs = report.run_logs
    window = (logs.since, logs.until) if logs is not None else None
    ours = tuple(logs.probe_ids) if logs is not None else ()
    adopted = report.deploy_adopted
    commands = m2_commands(cfg, report.run_id, window, after, ours, adopted.run if adopted else "")
    alloc = report.allocator
    deploy = cfg.deploy
    what = []
    if deploy is not None and adopted is not None:
        link = f" ({adopted.link})" if adopted.link else ""
        what.append(
            f"no deploy started: harness run `{adopted.run}` of recipe `{adopted.recipe}`, "
            f"finished {adopted.finished or 'at an unknown time'}, adopted as the deploy proof"
            f"{link}: it started after the fix, passed tiers {', '.join(deploy.tiers)} (a tier "
            "it declared not applicable is shown skipped), reported a clean teardown, and no "
            "stack of its recipe's runs remained on the host"
        )
    elif deploy is not None:
        what.append(
            f"recipe `{deploy.recipe}` deployed through `{cfg.network.name}` with the "
            f"{deploy.driver} driver, passed tiers {', '.join(deploy.tiers)} (a tier declared "
            "not applicable is shown skipped) and tore down cleanly"
        )
    if alloc:
        ports = "a published port" if cfg.allocator.publish_ports else "no published port"
        what.append(
            f"the bounded allocator reproduction ({len(alloc.rounds)} round(s) of "
            f"{alloc.rounds[0].stacks if alloc.rounds else 0} recipe-shaped stacks, each with "
            f"its own network and {ports}, on scratch overlay `{alloc.scratch}` in "
            f"`{cfg.network.name}`'s role, {alloc.removal} removal): "
            + engine_leak_text(alloc)
            + f"; left {sum(len(r.networks_left) for r in alloc.rounds)} stack network(s); "
            f"headroom {alloc.headroom_before_pct:.3f}% before, "
            f"{alloc.headroom_after_pct:.3f}% after; days to exhaustion: "
            + "; ".join(f.text() for f in forecasts(alloc))
        )
    what += [
        "no `could not find an available IP while allocating VIP` line in the docker log "
        "during the run",
        "zero residue: nothing carrying this run's label remains",
        "the upgrade procedure's Step-0 guard exists, detects the VIP signature and has a "
        "recovery action (restart docker)",
    ]
    return Claim(Gate.M2, what, commands)


def differing_commands(written: list[str], regenerated: list[ColdCommand]) -> list[str]:
    """Pure: HOW lines in STATUS that pvcheck would not write for this config and run (people
    paste them), and the ones it would write that are missing."""
    fresh = [c.command for c in regenerated]
    return [f"missing: {c}" for c in fresh if c not in written] + [
        line for line in written if line not in fresh
    ]
