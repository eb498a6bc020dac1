"""The `pvcheck` command: run, review, done, serve, prefect-yaml, worker, lab up|down|status,
config check|reference, report-schema (`pvcheck --help`; exit codes in errors.py)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

# Nothing imported here may import Prefect: main secures its settings first (pvcheck.rootenv).
from pvcheck import __version__, rootenv
from pvcheck.api import ensure_prefect_api
from pvcheck.config import LAB_CONFIG, RUN_ID_PATTERN, Config, load_config
from pvcheck.errors import (
    EXIT_BUSY,
    EXIT_GATE_FAILED,
    EXIT_INCOMPLETE,
    EXIT_PASS,
    EXIT_USAGE,
    ConfigError,
    PvcheckError,
)
from pvcheck.masking import masked_output
from pvcheck.pinned import pin
from pvcheck.records import Status, Verdict, parse_ts
from pvcheck.report import Report
from pvcheck.safeio import atomic_write
from pvcheck.seams import RouteObservation

NIGHTLY = "17 0 * * *"  # flows.serving.NIGHTLY_CRON, without importing Prefect's flows here
CONFIG_HELP = "the config to use (required; the built-in lab's is lab/pvcheck.toml)"
# `pvcheck lab up --profile NAME`: which lab to build. cc-ci: a twin of the real host, whose
# config is the shipped deployments/cc-ci.toml with only locations changed.
LAB_PROFILES = {"default": LAB_CONFIG, "cc-ci": LAB_CONFIG.parent / "cc-ci-twin.toml"}
VERDICT_EXIT = {
    Verdict.PASS: EXIT_PASS,
    Verdict.FAIL: EXIT_GATE_FAILED,
    Verdict.INCOMPLETE: EXIT_INCOMPLETE,
}
T = TypeVar("T")


def _route_lines(cfg: Config, probes: list[RouteObservation]) -> tuple[list[str], bool]:
    lines, ok = [], True
    for route, probe in zip(cfg.routes, probes, strict=True):
        good = probe.answers(route)
        ok &= good
        answer = probe.status if probe.status is not None else probe.error
        lines.append(
            f"  {'ok ' if good else 'BAD'} {route.name:<16} {route.url:<40} -> {answer} "
            f"({probe.latency_s * 1000:.0f} ms, {probe.attempts} attempt(s))"
        )
    return lines, ok


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    if not args.json:
        from pvcheck.placement import describe

        print(f"{args.file}: valid")
        print("Where each path and command is used:")
        print("\n".join(describe(cfg)))
    # The effective config: bases merged, defaults filled in, paths absolute.
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return EXIT_PASS


def cmd_config_reference(args: argparse.Namespace) -> int:
    from pvcheck.configref import reference_markdown

    sys.stdout.write(reference_markdown())  # docs/config.md, byte for byte
    return EXIT_PASS


def cmd_report_schema(args: argparse.Namespace) -> int:
    from pvcheck.reportmodel import report_schema

    # The schema of the JSON report (`run --json`, REPORT json), from the model that writes
    # it and that the review reads it back with.
    print(json.dumps(report_schema(), indent=2))
    return EXIT_PASS


def cmd_lab(args: argparse.Namespace) -> int:
    from pvcheck import lab

    if args.profile and args.config:
        raise PvcheckError("lab: give --profile or --config, not both")
    cfg = load_config(args.config or LAB_PROFILES[args.profile or "default"])
    if args.action == "up":
        probes = lab.lab_up(cfg)
        lines, ok = _route_lines(cfg, probes)
        print(f"lab up: network {cfg.network.name} {cfg.network.subnet}; routes through Traefik:")
        print("\n".join(lines))
        return EXIT_PASS if ok else 1
    if args.action == "down":
        left = lab.lab_down(cfg)
        leftovers = {k: v for k, v in left.items() if v}
        print("lab down: nothing left" if not leftovers else f"lab down: left {leftovers}")
        return EXIT_PASS if not leftovers else 1
    rows, probes = lab.lab_status(cfg)
    print("services:")
    for name, replicas in rows:
        print(f"  {name:<32} {replicas}")
    lines, ok = _route_lines(cfg, probes)
    print("routes (through Traefik):")
    print("\n".join(lines))
    return EXIT_PASS if ok and rows else 1


def count_line(report: Report) -> str:
    """`35 checks: 34 pass, 1 skip, 17.2 s` — what a terminal reader looks for first."""
    counts = Counter(str(c.status) for c in report.checks)
    parts = ", ".join(f"{counts[s]} {s}" for s in ("pass", "fail", "error", "skip") if counts[s])
    start, end = parse_ts(report.started_at), parse_ts(report.finished_at)
    took = f", {(end - start).total_seconds():.1f} s" if start and end else ""
    return f"{len(report.checks)} checks: {parts or 'none'}{took}"


def print_verdict(report: Report, out: TextIO | None = None) -> None:
    say = functools.partial(print, file=out or sys.stdout)
    say(f"pvcheck {report.verdict.label}  run {report.run_id}  target {report.target}")
    say(f"  {count_line(report)}")
    if report.incomplete_reason:
        say(f"  incomplete: {report.incomplete_reason}")
    for gate in report.gates:
        say(f"  gate {gate.gate} {gate.status.upper():<5} {gate.title}")
    for check in report.checks:
        if check.status != Status.PASS:
            say(
                f"    {check.status.upper():<5} {check.id}: expected {check.expected}; "
                f"found {check.found}. {check.detail}"
            )
    for stage, outcome in report.stages.items():
        say(f"  stage {stage}: {outcome}")
    for kind, path in report.evidence.items():
        say(f"  evidence {kind}: {path}")
    for line in report.docs.lines():
        say(f"  {line}")


@contextlib.contextmanager
def target_overlay(config: str, url: str) -> Iterator[str]:
    """A config built on `config` whose engine is `url`, in a root-only temporary folder:
    `--target` is the operator's; a served run's form has no engine field."""
    with tempfile.TemporaryDirectory(prefix="pvcheck-target-") as folder:
        path = Path(folder) / "target.toml"
        base = json.dumps(str(Path(config).resolve()))
        path.write_text(f"base = {base}\n\n[target]\ndocker_host = {json.dumps(url)}\n")
        yield str(path)


def cmd_run(args: argparse.Namespace) -> int:
    from pvcheck.deploy import adopt as adoption
    from pvcheck.flows.verify import RunParameters, verify

    if args.canary and args.target:
        # Refused before anything connects: the canary makes an allocator log the signature
        # a real host's upgrade guard answers by restarting docker.
        raise ConfigError(args.config, "--canary", "not with --target: the canary is lab-only")
    with contextlib.ExitStack() as stack:
        path = (
            stack.enter_context(target_overlay(args.config, args.target))
            if args.target
            else args.config
        )
        cfg = load_config(path)  # fail fast (exit 2) before connecting
        if args.adopt:
            if not re.fullmatch(RUN_ID_PATTERN, args.adopt):
                raise ConfigError(args.config, "--adopt", f"{args.adopt[:70]!r} is not a run id")
            adoption.Settings.from_config(cfg, args.adopt)  # the flow checks the token
        pin([path])  # the flow runs this config and no other
        ensure_prefect_api()
        params = RunParameters.form(cfg) | {"canary": args.canary, "adopt": args.adopt}
        state = verify(**params, return_state=True)
    if state.is_cancelled():
        print(f"pvcheck: {state.message}", file=sys.stderr)
        return EXIT_BUSY
    report = _flow_result(state, Report)
    for kind, path in (("json", args.json), ("junit", args.junit)):
        if path:
            report.evidence[kind] = "(stdout)" if path == "-" else path
    _write_report(args.json, report.to_json())
    _write_report(args.junit, report.to_junit())
    # With a report on stdout, the verdict for people goes to stderr: stdout stays parseable.
    print_verdict(report, sys.stderr if "-" in (args.json, args.junit) else sys.stdout)
    return VERDICT_EXIT[report.verdict]


def _flow_result(state: Any, kind: type[T]) -> T:
    """The flow's result; an exception it ended with is re-raised (mapped to an exit code)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, kind):
        raise PvcheckError(f"the flow ended {state.type.value} without a result: {state.message}")
    return result


def _write_report(path: str | None, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    elif path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), text)


def cmd_review(args: argparse.Namespace) -> int:
    (name,) = pin([args.config])
    from pvcheck.flows.review import review
    from pvcheck.reviewrecord import ReviewResult

    ensure_prefect_api()
    state = review(target=name, return_state=True)
    if state.is_cancelled():
        print(f"pvcheck: {state.message}", file=sys.stderr)
        return EXIT_BUSY
    result = _flow_result(state, ReviewResult)
    _write_report(args.json, json.dumps(result.as_json(), indent=2) + "\n")
    # With the JSON on stdout, the text for people goes to stderr.
    say = functools.partial(print, file=sys.stderr if args.json == "-" else sys.stdout)
    say(f"pvcheck review {result.verdict.label}  {result.review_id}")
    for gate, verdict in result.verdicts.items():
        claim = result.claims[gate]
        say(f"  gate {gate} {verdict.label:<4} (claim: {claim.state}, run {claim.run_id or '-'})")
    for finding in result.findings:
        say(f"    finding [{finding.gate}] {finding.title}")
    for line in result.churn:
        say(f"    churn since the claim (not pvcheck's): {line}")
    for kind, path in result.evidence.items():
        say(f"  evidence {kind}: {path}")
    for line in result.docs.lines():
        say(f"  {line}")
    return EXIT_PASS if result.verdict == Verdict.PASS else EXIT_GATE_FAILED


def cmd_done(args: argparse.Namespace) -> int:
    from pvcheck.done import write_done

    cfg = load_config(args.config)
    done = write_done(cfg)
    if done.ok:
        print(f"## DONE written to {cfg.docs.paths.status}")
    else:
        print("not done:")
        for problem in done.problems:
            print(f"  {problem}")
        if done.withdrawn:
            print(f"  ## DONE withdrawn from {cfg.docs.paths.status} (JOURNAL says why)")
    if done.committed:
        print(f"  docs commit: {done.committed}")
    return EXIT_PASS if done.ok else EXIT_GATE_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    configs = pin(args.config)  # the served deployments may run these configs only
    from pvcheck.flows.serving import serve_all

    serve_all(configs, args.cron, args.timezone)
    return EXIT_PASS


def cmd_prefect_yaml(args: argparse.Namespace) -> int:
    from pvcheck.flows.serving import prefect_yaml

    configs = {c.target.name: c for c in map(load_config, args.config)}
    if len(configs) != len(args.config):
        raise ConfigError(args.config[-1], "target.name", "two configs name the same target")
    sys.stdout.write(prefect_yaml(configs, args.cron, args.timezone, args.pool))
    return EXIT_PASS


def cmd_worker(args: argparse.Namespace) -> int:
    pin(args.config)  # the worker's flow runs may run these configs only
    from pvcheck.flows.serving import start_worker

    start_worker(args.pool)  # replaces this process
    return EXIT_PASS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvcheck", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pvcheck {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every docker call")
    # The same flag after the subcommand (`pvcheck run -v`); SUPPRESS keeps the one before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    config = sub.add_parser("config", help="validate a config file")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser(
        "check", parents=[common], help="validate FILE and print what was understood"
    )
    check.add_argument("file")
    check.add_argument(
        "--json", action="store_true", help="print only the effective (merged) config as JSON"
    )
    check.set_defaults(func=cmd_config_check)
    reference = config_sub.add_parser(
        "reference",
        parents=[common],
        help="print the reference of every config key as Markdown (docs/config.md)",
    )
    reference.set_defaults(func=cmd_config_reference)

    schema = sub.add_parser(
        "report-schema",
        help="print the JSON schema of the run's JSON report (run --json, REPORT json)",
    )
    schema.set_defaults(func=cmd_report_schema)

    run = sub.add_parser("run", help="run the verification flow and print the verdict")
    run.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    run.add_argument("--json", metavar="FILE", help="write the JSON report here (- for stdout)")
    run.add_argument("--junit", metavar="FILE", help="write JUnit XML here (- for stdout)")
    run.add_argument(
        "--canary",
        action="store_true",
        help="lab only: make the real allocator log the VIP signature and prove the guard sees it",
    )
    run.add_argument(
        "--target",
        metavar="URL",
        help="verify this engine instead of the config's target.docker_host "
        "(e.g. ssh://root@cc-ci.example:22)",
    )
    run.add_argument(
        "--adopt",
        metavar="RUN",
        default="",
        help="start no deploy: take this finished harness run (cc-ci: its Drone build number) as "
        "M2's deploy proof, if it started after the fix, passed every required tier, reported "
        "a clean teardown and its stacks are gone (needs [deploy.adopt])",
    )
    run.set_defaults(func=cmd_run)

    rev = sub.add_parser("review", help="the independent review run (the Adversary)")
    rev.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    rev.add_argument("--json", metavar="FILE", help="write the JSON review here (- for stdout)")
    rev.set_defaults(func=cmd_review)

    done = sub.add_parser("done", help="write ## DONE when every gate has a fresh review PASS")
    done.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    done.set_defaults(func=cmd_done)

    srv = sub.add_parser("serve", help="serve the Prefect deployments (starts a server if none)")
    srv.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="FILE",
        help=CONFIG_HELP + "; repeat it to serve a fleet (one set of deployments per target)",
    )
    srv.add_argument(
        "--cron",
        default=NIGHTLY,
        help="nightly schedule (default 00:17; checked against the config's sweep timers)",
    )
    srv.add_argument("--timezone", default="UTC", help="time zone of the cron schedule")
    srv.set_defaults(func=cmd_serve)

    yml = sub.add_parser(
        "prefect-yaml", help="print prefect.yaml with the deployments serve would build"
    )
    yml.add_argument("--config", required=True, action="append", metavar="FILE", help=CONFIG_HELP)
    yml.add_argument("--cron", default=NIGHTLY, help="nightly schedule (as for serve)")
    yml.add_argument("--timezone", default="UTC", help="time zone of the cron schedule")
    yml.add_argument("--pool", default="pvcheck", help="the process work pool's name")
    yml.set_defaults(func=cmd_prefect_yaml)

    wrk = sub.add_parser(
        "worker", help="run `prefect worker start` for a process pool with the configs pinned"
    )
    wrk.add_argument("--config", required=True, action="append", metavar="FILE", help=CONFIG_HELP)
    wrk.add_argument("--pool", default="pvcheck", help="the process work pool's name")
    wrk.set_defaults(func=cmd_worker)

    labp = sub.add_parser(
        "lab", help="the built-in lab (a local swarm, real Traefik) or the cc-ci twin (--profile)"
    )
    labp.add_argument("action", choices=["up", "down", "status"])
    labp.add_argument("--config", help="a lab config (default: the profile's)")
    labp.add_argument(
        "--profile",
        choices=sorted(LAB_PROFILES),
        help="default: the built-in lab; cc-ci: a twin of cc-ci (lab/cc-ci-twin.toml)",
    )
    labp.set_defaults(func=cmd_lab)
    return parser


PATH_ARGS = ("file", "config", "json", "junit")  # every option naming a file; "-" is stdout


def absolute_paths(args: argparse.Namespace, cwd: str) -> None:
    """The path arguments, relative ones joined to `cwd` (not normalised: `a/../b` still
    means what the kernel would make of it from there)."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "-":
            setattr(args, name, os.path.join(cwd, value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.join(cwd, v) for v in value])


def secure_process(args: argparse.Namespace) -> None:
    """As root, before Prefect is imported: the caller's paths made absolute, then the
    working folder, HOME and Prefect's settings made root's alone (pvcheck.rootenv)."""
    if os.geteuid() == 0:
        absolute_paths(args, os.getcwd())
        rootenv.secure()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    # Run as a program (no argv), the process is pvcheck's to secure; a Python caller's
    # process, its folder and environment, stay the caller's.
    if argv is None:
        try:
            secure_process(args)
        except (PvcheckError, OSError) as exc:
            print(f"pvcheck: {exc}", file=sys.stderr)
            return exc.exit_code if isinstance(exc, PvcheckError) else EXIT_USAGE
    from pvcheck import runlog  # imports Prefect

    # Prefect's console handler stays (task names on each line); pvcheck's module loggers
    # go through the run's logger.
    runlog.install(verbose=args.verbose)
    with masked_output():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except PvcheckError as exc:
        print(f"pvcheck: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pvcheck: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"pvcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
