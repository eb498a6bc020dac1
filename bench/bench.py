"""pvcheck's benchmark on the built-in lab; writes bench/RESULTS.md.

    .venv/bin/python -m bench.bench [--repeat 3]

Figures (issue 9): full verification vs the plain runbook (alternated, one sitting); the
orchestration overhead (engine + running API vs the same task functions called directly);
docker API requests to gather facts with 10 and 200 extra services on the overlay; 50 routes
answering after 200 ms, concurrent vs serial; seconds per throwaway stack, pvcheck vs a
minimal docker-py loop; peak RSS of a full run; the embedded API's start-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.labconfig import all_tiers, write_config
from pvcheck import allocator
from pvcheck.api import wait_healthy
from pvcheck.compose import prepare
from pvcheck.config import LAB_CONFIG, HttpConfig, RouteConfig, load_config
from pvcheck.hostfacts import gather_facts, parse_network
from pvcheck.routes import probe_routes
from pvcheck.stacks import remove_labelled
from pvcheck.swarm import LABEL_RUN, Swarm
from pvcheck.wiring import build_seams

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
PVCHECK = str(Path(sys.executable).parent / "pvcheck")
PREFECT = str(Path(sys.executable).parent / "prefect")


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:.3g} {self.unit}"
        lo, hi = min(self.values), max(self.values)
        return f"{self.median:.3g} {self.unit} (n={len(self.values)}, {lo:.3g}..{hi:.3g})"


def timed_child(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, float]:
    """Wall seconds, exit code and peak RSS (MB) of one child process."""
    t0 = time.monotonic()
    with open(cwd / "child.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t0, proc.returncode, usage.ru_maxrss / 1024


@contextmanager
def prefect_server(port: int = 4299) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_healthy(url, 180), "prefect server did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- 1, 6, 7: whole runs -------------------------------------------------------------------
def full_runs(repeat: int, api_url: str, work: Path) -> dict[str, Figure]:
    config = write_config(work, all_tiers)  # the recipe's four tiers, as the runbook does
    env_server = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env_embedded = {k: v for k, v in env_server.items() if k != "PREFECT_API_URL"}
    figs = {
        k: Figure(k, u)
        for k, u in [
            ("pvcheck", "s"),
            ("runbook", "s"),
            ("pvcheck-embedded", "s"),
            ("rss", "MB"),
        ]
    }
    for i in range(repeat):
        # Alternate, and alternate which goes first, so drift hits both alike.
        order = ["pvcheck", "runbook"] if i % 2 == 0 else ["runbook", "pvcheck"]
        for who in order:
            if who == "pvcheck":
                secs, rc, rss = timed_child(
                    [PVCHECK, "run", "--config", str(config)], env_server, work
                )
                figs["rss"].values.append(rss)
            else:
                secs, rc, _ = timed_child(
                    ["bash", str(ROOT / "bench" / "runbook.sh"), str(work / "docs")],
                    env_server,
                    work,
                )
            assert rc == 0, f"{who} run {i} exited {rc}; see {work / 'child.log'}"
            figs[who].values.append(secs)
        secs, rc, _ = timed_child([PVCHECK, "run", "--config", str(config)], env_embedded, work)
        assert rc == 0, f"embedded run exited {rc}"
        figs["pvcheck-embedded"].values.append(secs)
    return figs


# --- 2: orchestration overhead -------------------------------------------------------------
def overhead(repeat: int, api_url: str, work: Path) -> dict[str, Figure]:
    os.environ["PREFECT_API_URL"] = api_url
    from bench.direct import run_direct
    from pvcheck.flows.verify import RunParameters, verify
    from pvcheck.pinned import pin

    config = str(write_config(work))
    (cfg,) = pin([config]).values()
    engine, direct = Figure("engine", "s"), Figure("direct", "s")
    for _ in range(repeat):
        t0 = time.monotonic()
        state = verify(**RunParameters.form(cfg), return_state=True)
        engine.values.append(time.monotonic() - t0)
        assert state.is_completed(), state
        t0 = time.monotonic()
        report = run_direct(config)
        direct.values.append(time.monotonic() - t0)
        assert report.verdict == "pass", [c for c in report.failing]
    return {"engine": engine, "direct": direct}


# --- 3: facts cost as the swarm grows ------------------------------------------------------
def facts_requests(swarm: Swarm, extra: int) -> int:
    """Docker API requests to gather the facts with `extra` more services on the overlay."""
    cfg = load_config(LAB_CONFIG)
    label = f"{LABEL_RUN}=bench-facts"
    image = swarm.client.images.get("local/busybox:1").id

    def one(i: int) -> None:
        swarm.client.services.create(  # type: ignore[no-untyped-call]
            image,
            ["sleep", "3600"],
            name=f"bench-facts-{i}",
            networks=[cfg.network.name],
            labels={LABEL_RUN: "bench-facts"},
            container_labels={LABEL_RUN: "bench-facts"},
            stop_signal="KILL",
        )

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(extra)))
        deadline = time.monotonic() + 600
        while parse_network(swarm.network(cfg.network.name) or {}).task_ips < extra:
            assert time.monotonic() < deadline, f"{extra} services never ran"
            time.sleep(2)
        before = swarm.requests
        facts = gather_facts(
            swarm, cfg.network.name, cfg.services.control_plane, timedelta(hours=1)
        )
        assert facts.network is not None and facts.network.task_ips >= extra
        return swarm.requests - before
    finally:
        remove_labelled(swarm, label, timeout_s=600)


# --- 4: routes at scale --------------------------------------------------------------------
@contextmanager
def slow_server(delay_s: float) -> Iterator[int]:
    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def routes_at_scale(n: int = 50, delay_s: float = 0.2) -> dict[str, Figure]:
    out = {}
    with slow_server(delay_s) as port:
        routes = [
            RouteConfig(
                name=f"r{i}", url=f"http://r{i}.bench.test/", connect_to=f"127.0.0.1:{port}"
            )
            for i in range(n)
        ]
        default = HttpConfig()
        for name, http in [("concurrent", default), ("serial", HttpConfig(concurrency=1))]:
            t0 = time.monotonic()
            probes = probe_routes(routes, http)
            out[name] = Figure(
                f"{name} (concurrency {http.concurrency})", "s", [time.monotonic() - t0]
            )
            assert all(p.status == 200 for p in probes)
    return out


# --- 5, 8: stacks: pvcheck vs the same docker CLI work as a shell loop ---------------------
STACKS_SH = str(ROOT / "bench" / "stacks.sh")


def _shell(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", STACKS_SH, *args], check=True, timeout=600)
    return time.monotonic() - t0


def allocator_vs_shell(repeat: int, work: Path, batch: int = 10) -> dict[str, Figure]:
    """Seconds per throwaway stack: pvcheck's round against the same composes deployed and
    removed by a shell loop (deploy, running, concurrent `docker stack rm`, released)."""

    def sized(raw: dict[str, Any]) -> None:
        raw["allocator"].update(batch=batch, concurrency=10)

    cfg = load_config(write_config(work, sized))
    swarm = Swarm.for_target(cfg.target)
    ours, shell = Figure("pvcheck reproduce()", "s/stack"), Figure("shell loop", "s/stack")
    probe = Figure("capacity probe", "s")
    for i in range(repeat):
        run_id = f"pv-20260101000000-{i:06x}"
        seams = build_seams(cfg, swarm, run_id, with_driver=False)
        settings = allocator.Settings.from_config(cfg, run_id)
        t0 = time.monotonic()
        result = allocator.reproduce(seams, settings, progress=lambda _: None)
        # The round itself; the allocator's count afterwards is reported on its own.
        ours.values.append((time.monotonic() - t0 - result.probe_s) / batch)
        probe.values.append(result.probe_s)
        remove_labelled(swarm, f"{LABEL_RUN}={run_id}", timeout_s=120)
        folder = work / f"shell-{i}"
        folder.mkdir()
        labels = {LABEL_RUN: f"bench-shell-{i}", "pvcheck.role": "throwaway"}
        # The same scratch overlay in the shared network's role, made and removed the same way.
        net = f"bench-scratch-{i}"
        net_id = swarm.create_overlay(net, cfg.allocator.scratch_subnet, labels)
        files = []
        for n in range(1, batch + 1):
            stack = f"bench-sh{i}-{n}"
            files.append(folder / f"{stack}.yml")
            files[-1].write_text(
                allocator.throwaway_compose(
                    stack, cfg.allocator.image, net, labels, grace_s=cfg.allocator.stop_grace_s
                )
            )
        t0 = time.monotonic()
        _shell("throwaways", net, "10", *map(str, files))
        while not swarm.remove_network(net_id):
            time.sleep(0.25)
        shell.values.append((time.monotonic() - t0) / batch)
        remove_labelled(swarm, f"{LABEL_RUN}=bench-shell-{i}", timeout_s=120)
    return {"ours": ours, "shell": shell, "probe": probe}


def recipe_vs_shell(repeat: int, work: Path) -> dict[str, Figure]:
    """The lab recipe, install to teardown: pvcheck's compose driver (install tier only)
    against the same prepared compose deployed and removed by the shell loop."""
    from pvcheck.deploy.compose import ComposeDriver, app_env

    def install_only(raw: dict[str, Any]) -> None:
        raw["deploy"]["tiers"] = ["install"]

    cfg = load_config(write_config(work, install_only))
    assert cfg.deploy is not None and cfg.deploy.compose is not None
    compose = cfg.deploy.compose
    swarm = Swarm.for_target(cfg.target)
    ours, shell = Figure("pvcheck compose driver", "s"), Figure("shell loop", "s")
    route = httpx.URL(compose.route.url).host
    for i in range(repeat):
        t0 = time.monotonic()
        run_id = f"pv-20260101000000-{i:06x}"
        outcome = ComposeDriver(build_seams(cfg, swarm, run_id, False), cfg, run_id).run()
        ours.values.append(time.monotonic() - t0)
        assert outcome.tiers[0].status == "pass" and outcome.clean_teardown_reported, outcome
        stack = f"bench-notes-{i}"
        env = app_env(compose, stack)
        text, _ = prepare(compose.file, env, {LABEL_RUN: f"bench-shell-{i}"})
        path = work / f"{stack}.yml"
        path.write_text(text)
        secret = f"{stack}_api_key_{env['SECRET_API_KEY_VERSION']}"
        port = str(cfg.lab.http_port if cfg.lab else 80)
        shell.values.append(_shell("recipe", str(path), stack, secret, route, port))
        remove_labelled(swarm, f"{LABEL_RUN}=bench-shell-{i}", timeout_s=120)
    return {"ours": ours, "shell": shell}


# --- the report ----------------------------------------------------------------------------
def versions() -> str:
    import prefect

    swarm = Swarm.connect("unix:///var/run/docker.sock")
    traefik = httpx.get(
        "http://127.0.0.1:18080/api/version",
        headers={"Host": "traefik.lab.test"},
        timeout=5,
        trust_env=False,
    ).json()
    return (
        f"{platform.node()} · {os.cpu_count()} cores · {platform.platform()} · Python "
        f"{platform.python_version()} · Docker Engine {swarm.info()['ServerVersion']} · "
        f"Traefik {traefik.get('Version')} · Prefect {prefect.__version__}"
    )


def replace_section(text: str, heading: str, new: str) -> str:
    """Pure: `text` with the section under `heading` (to the next `## `) replaced by `new`,
    appended when absent: each sitting rewrites its own section of RESULTS.md."""
    start = text.find(heading)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + new
    end = text.find("\n## ", start + len(heading))
    return text[:start] + new + (text[end + 1 :] if end >= 0 else "")


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    started = datetime.now(UTC)
    swarm = Swarm.connect("unix:///var/run/docker.sock")
    work = Path(tempfile.mkdtemp(prefix="pvcheck-bench-"))
    for sub in ("full", "overhead", "alloc"):
        (work / sub).mkdir()
    try:
        with prefect_server() as url:
            t0 = time.monotonic()
            full = full_runs(args.repeat, url, work / "full")
            over = overhead(args.repeat, url, work / "overhead")
        facts = {n: facts_requests(swarm, n) for n in (10, 200)}
        routes = routes_at_scale()
        alloc = allocator_vs_shell(args.repeat, work / "alloc")
        recipe = recipe_vs_shell(args.repeat, work / "recipe")
        elapsed = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = full["pvcheck"].median / full["runbook"].median
    extra = over["engine"].median - over["direct"].median
    extra_pct = 100 * extra / over["engine"].median
    alloc_ratio = alloc["ours"].median / alloc["shell"].median
    recipe_ratio = recipe["ours"].median / recipe["shell"].median
    startup = full["pvcheck-embedded"].median - full["pvcheck"].median
    rows = [
        (
            "1",
            "full verification: pvcheck (running API) vs the serial runbook",
            f"{full['pvcheck'].cell()} vs {full['runbook'].cell()}; ratio {ratio:.2f}",
            "ratio <= 1.0",
            verdict(ratio <= 1.0),
        ),
        (
            "2",
            "orchestration overhead: engine + API vs task functions called directly",
            f"{over['engine'].cell()} vs {over['direct'].cell()}; "
            f"+{extra:.2f} s ({extra_pct:.1f} %)",
            "<= 15 % or <= 5 s",
            verdict(extra_pct <= 15 or extra <= 5),
        ),
        (
            "3",
            "docker API requests to gather facts, +10 / +200 services on the overlay",
            f"{facts[10]} / {facts[200]}",
            "equal",
            verdict(facts[10] == facts[200]),
        ),
        (
            "4",
            "50 routes answering after 200 ms: concurrent vs serial",
            f"{routes['concurrent'].cell()} vs {routes['serial'].cell()}",
            "<= 1 s (serial >= 10 s)",
            verdict(routes["concurrent"].median <= 1.0 and routes["serial"].median >= 10),
        ),
        (
            "5",
            "allocator: seconds per throwaway stack (recipe-shaped, 10 stacks, 10 at a time), "
            "pvcheck vs the same `docker stack deploy`/`rm` as a shell loop",
            f"{alloc['ours'].cell()} vs {alloc['shell'].cell()}; ratio {alloc_ratio:.2f}",
            "ratio <= 1.1",
            verdict(alloc_ratio <= 1.1),
        ),
        (
            "5b",
            "allocator: the capacity probe after the round (fill of the scratch network until "
            "the allocator refuses, then removal), not in 5",
            alloc["probe"].cell(),
            "reported",
            "measured",
        ),
        (
            "8",
            "lab recipe install-to-teardown: pvcheck's compose driver vs the same "
            "`docker stack deploy`/`rm` as a shell loop",
            f"{recipe['ours'].cell()} vs {recipe['shell'].cell()}; ratio {recipe_ratio:.2f}",
            "ratio <= 1.1",
            verdict(recipe_ratio <= 1.1),
        ),
        (
            "6",
            "peak RSS of a full `pvcheck run`",
            full["rss"].cell(),
            "<= 400 MB",
            verdict(full["rss"].median <= 400),
        ),
        (
            "7",
            "embedded API start-up a first run pays (embedded minus running-server run)",
            f"{startup:.1f} s (embedded run {full['pvcheck-embedded'].cell()})",
            "avoid with a running server",
            "measured",
        ),
    ]
    lines = [
        "# pvcheck benchmark results",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC in one sitting ({elapsed / 60:.1f} min) by "
        f"`.venv/bin/python -m bench.bench --repeat {args.repeat}` on the built-in lab.",
        "",
        f"Machine: {versions()}",
        "",
        "Each figure is the median over the runs, with n and the range (min..max).",
        "",
        "| # | what | measured | target | |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
    ]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
