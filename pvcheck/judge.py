"""Pure judging: facts in, Check records out. No I/O here, so every rule is unit-tested."""

from __future__ import annotations

from pvcheck.config import NetworkConfig, RouteConfig
from pvcheck.facts import Attribution, NetworkFacts, ServiceFacts
from pvcheck.logscan import VIP_SIGNATURE, LogScan
from pvcheck.records import Check, Status
from pvcheck.routes import RouteObservation
from pvcheck.stacks import residue_names


def precondition_phase(phase: str, path: str, done: bool | None) -> Check:
    """done is None when the file does not exist."""
    found = "file missing" if done is None else ("## DONE present" if done else "no ## DONE line")
    return Check(
        id=f"pre.{phase}-done",
        gate="M1",
        status=Status.PASS if done else Status.FAIL,
        expected=f"{path} contains '## DONE'",
        found=found,
        detail="" if done else f"phase {phase} is not done: finish it before verifying",
    )


def network_matches(cfg: NetworkConfig, net: NetworkFacts | None) -> Check:
    expected = f"network {cfg.name} ({cfg.driver}) with subnet {cfg.subnet}"
    if net is None:
        return Check("pre.network", "M1", Status.FAIL, expected, "network missing")
    found = f"network {net.name} ({net.driver}) with subnet {net.subnet or 'none'}"
    ok = net.subnet == cfg.subnet and net.driver == cfg.driver
    detail = "" if ok else f"expected subnet {cfg.subnet}, found {net.subnet or 'none'}"
    if net.driver != cfg.driver:
        detail = f"expected driver {cfg.driver}, found {net.driver}"
    return Check("pre.network", "M1", Status.PASS if ok else Status.FAIL, expected, found, detail)


def headroom(net: NetworkFacts | None, warn_pct: float) -> Check:
    expected = f"headroom >= {warn_pct:g}% of capacity"
    if net is None:
        return Check("facts.headroom", "M1", Status.SKIP, expected, "no network", "network missing")
    ok = net.headroom_pct >= warn_pct
    return Check(
        "facts.headroom",
        "M1",
        Status.PASS if ok else Status.FAIL,
        expected,
        f"{net.used}/{net.capacity} used, headroom {net.headroom_pct:.2f}%",
        "" if ok else "the network is close to exhaustion",
    )


def service_healthy(svc: ServiceFacts, when: str = "before") -> Check:
    expected = "running replicas = desired (> 0), tasks Running"
    ok = svc.healthy
    detail = ""
    if not svc.exists:
        detail = f"service {svc.name} does not exist"
    elif not ok:
        detail = f"service {svc.name} has {svc.running}/{svc.desired} replicas running"
    return Check(
        f"svc.{svc.name}" + ("" if when == "before" else f".{when}"),
        "M1",
        Status.PASS if ok else Status.FAIL,
        expected,
        svc.summary(),
        detail,
    )


def route_answer(route: RouteConfig, obs: RouteObservation) -> Check:
    want = "/".join(str(s) for s in route.expect_status)
    expected = f"HTTP {want}" + (
        f" with body containing {route.body_contains!r}" if route.body_contains else ""
    )
    if not route.verify_tls:
        expected += " (TLS verification OFF for this route)"  # shown in the STATUS table
    if obs.status is None:
        found = obs.error or "no answer"
    else:
        found = f"HTTP {obs.status}" + (
            "" if obs.body_has_text is not False else ", body text missing"
        )
    ok = obs.status in route.expect_status and obs.body_has_text is not False
    detail = f"{obs.attempts} attempt(s), {obs.latency_s * 1000:.0f} ms"
    if not route.verify_tls:
        detail += "; TLS verification OFF for this route"
    if not ok:
        detail = f"route {route.name} ({route.url}) is down: {found}; " + detail
    return Check(
        f"route.{route.name}",
        "M1",
        Status.PASS if ok else Status.FAIL,
        expected,
        found,
        detail,
        duration_s=obs.latency_s,
    )


def skipped(check_id: str, gate: str, expected: str, reason: str) -> Check:
    return Check(check_id, gate, Status.SKIP, expected, "not run", reason)


def traffic_stopped(check_id: str, expected: str, recheck: Check) -> Check:
    """A traffic stage not started because its route re-check (routes_still_up) failed."""
    reason = f"skipped: no new test traffic, core routes are down ({recheck.found})"
    return skipped(check_id, "M2", expected, reason)


def residue(left: dict[str, list[str]], label: str) -> Check:
    names = residue_names(left)
    return Check(
        "teardown.residue",
        "M2",
        Status.FAIL if names else Status.PASS,
        f"no object labelled {label} remains",
        f"{len(names)} left" + (f": {', '.join(names)}" if names else ""),
        "" if not names else "teardown left objects behind; they are listed by name",
    )


def clean_teardown(
    stacks: list[str],
    left: dict[str, list[str]],
    share: Attribution | None,
    after_used: int | None,
    reported: bool | None,
    described: str = "",
) -> Check:
    """Residue of the app's stacks is zero and no endpoint is left that only they could
    explain (other services' churn on a shared network is reported, not blamed on the app).
    No stack to watch is an error: a teardown check that watched nothing proves nothing."""
    if not stacks:
        return Check(
            "deploy.teardown",
            "M2",
            Status.ERROR,
            f"no object of {described or 'the app'} remains; no endpoint left behind",
            "no stack to watch",
            f"{described or 'the app'} was never seen on the network during the run",
        )
    stack = ", ".join(stacks)
    names = residue_names(left)
    leaked = share.leaked if share else 0
    ok = not names and leaked == 0
    found = f"{len(names)} objects left" + (f" ({', '.join(names)})" if names else "")
    if share is not None:
        found += (
            f"; endpoints {after_used}: {share.ours_left} still the app's, {share.unexplained} "
            f"unexplained, {share.others:+d} from other services"
        )
    detail = "" if reported is None else f"the driver reported clean_teardown={reported}"
    if leaked:
        detail = f"{leaked} endpoint(s) not released after the app was removed; " + detail
    return Check(
        "deploy.teardown",
        "M2",
        Status.PASS if ok else Status.FAIL,
        f"no object of stack {stack} remains; no endpoint left behind",
        found,
        detail.strip("; "),
    )


def fresh_logs(check_id: str, scan: LogScan, window: str) -> Check:
    """The VIP line fails its gate; the rest of the family is reported as evidence. A log
    that could not be read is an error: it proves nothing either way."""
    expected = f"no '{VIP_SIGNATURE}' in the docker log during {window}"
    if scan.error:
        return Check(
            check_id,
            "M2",
            Status.ERROR,
            expected,
            f"docker log not read ({scan.since} -> {scan.until})",
            f"source {scan.source}: {scan.error}",
        )
    others = ", ".join(f"{k} {v}" for k, v in scan.counts.items() if k != "vip_exhausted")
    return Check(
        check_id,
        "M2",
        Status.FAIL if scan.vip_count else Status.PASS,
        expected,
        f"{scan.vip_count} VIP lines ({scan.since} -> {scan.until}); {others}",
        f"source {scan.source}"
        + (f"; first: {scan.lines[0][:300]}" if scan.vip_count and scan.lines else ""),
    )


def janitor(reaped: dict[str, dict[str, list[str]]]) -> Check:
    """Earlier runs that died and were reaped: anything left of them is a failure."""
    left = {run: residue_names(kinds) for run, kinds in reaped.items()}
    dirty = {run: names for run, names in left.items() if names}
    return Check(
        "teardown.janitor",
        "M2",
        Status.FAIL if dirty else Status.PASS,
        "nothing left of earlier pvcheck runs that died",
        f"reaped {len(reaped)} dead run(s)"
        + (f": {', '.join(sorted(reaped))}" if reaped else "")
        + (f"; still left: {dirty}" if dirty else ""),
    )


def routes_still_up(before: str, checks: list[Check]) -> Check:
    """The core routes re-probed just before a stage starts new test traffic."""
    down = [f"{c.id}: {c.found}" for c in checks if c.status != Status.PASS]
    return Check(
        f"route.recheck-{before}",
        "M1",
        Status.FAIL if down else Status.PASS,
        f"every core route still answers before the {before} stage",
        "; ".join(down) if down else f"{len(checks)} core route(s) answer",
        "a reverse-proxy outage during the run: no new test traffic was started" if down else "",
        duration_s=max((c.duration_s for c in checks), default=0.0),
    )


def teardown_unchecked(label: str, why: str) -> Check:
    """Teardown could not reach the host; what is left is the next run's janitor's."""
    return Check(
        "teardown.residue",
        "M2",
        Status.ERROR,
        f"nothing left with label {label}",
        f"not checked: {why}",
        "the target became unreachable; the next run's janitor removes this run's objects",
    )
