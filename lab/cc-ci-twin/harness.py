#!/usr/bin/env python3
"""The cc-ci twin's recipe harness: what a `!testme` build runs on the host.

Modelled on cc-ci's own (lab/cc-ci-twin/FACTS.md): it takes a recipe, names the app
`<first 4 chars of the recipe>-<6 hex of a hash over recipe, PR and ref>.<domain suffix>` (the
stack is the domain with dots as underscores, as abra names it), holds an exclusive flock on
`<lock dir>/cc-ci-app-<domain>.lock` for its whole life (a second run of the same domain
waits for it), deploys the recipe with `docker stack deploy` joining `proxy`, runs its tiers
through the host's Traefik over TLS, tears the app down, and writes results.json in schema 2
(the record's 17 keys). Only the standard library, the docker CLI and curl: it does not know
pvcheck.

Usage: harness.py RECIPE --results FILE [--run-id ID] [--pr N] [--ref SHA] [--recipes DIR]
       [--lock-dir /run/lock] [--active-dir DIR] [--domain-suffix ci.commoninternet.net]
       [--https 127.0.0.1:443] [--cacert CA] [--leave-stack]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
IMAGE = "local/pvcheck-web:1"
HELPER_IMAGE = "local/busybox:1"
DEADLINE_S = 90.0


class TierFailed(Exception):
    """A tier's check did not hold; the message says what was seen."""


def say(text: str) -> None:
    print(f"[harness {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
    say("$ " + " ".join(argv))
    proc = subprocess.run(
        argv,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise TierFailed(f"{argv[0]} {argv[1]} exited {proc.returncode}: {proc.stderr[-300:]!r}")
    return proc.stdout.decode(errors="replace")


def app_name(recipe: str, suffix: str, pr: str, ref: str) -> tuple[str, str]:
    """(domain, stack): `cust-1a2b3c.ci.commoninternet.net`, `cust-1a2b3c_ci_commoninternet_net`;
    the same recipe, PR and ref give the same name."""
    head = recipe.lower()[:4]
    digest = hashlib.sha256(f"{recipe}|{pr}|{ref}".encode()).hexdigest()[:6]
    domain = f"{head}-{digest}.{suffix}"
    return domain, domain.replace(".", "_")


def hold_app_lock(lock_dir: str, domain: str) -> int:
    """The run's flock on its app's lock file, held until the process ends (the kernel lets
    go of a killed run's); a run of the same domain waits here."""
    Path(lock_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(lock_dir) / f"cc-ci-app-{domain}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    say(f"waiting for {path}")
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.utime(fd)
    say(f"holding {path}")
    return fd


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.domain, self.stack = app_name(args.recipe, args.domain_suffix, args.pr, args.ref)
        self.compose = Path(args.recipes) / args.recipe / "compose.yml"
        # The image by ID: the engine never tries a registry for a local-only image.
        self.image = run(["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE]).strip()

    def env(self, version: str) -> dict[str, str]:
        return {
            "DOMAIN": self.domain,
            "STACK_NAME": self.stack,
            "VERSION": version,
            "IMAGE": self.image,
        }

    def deploy(self, version: str) -> None:
        run(
            [
                "docker",
                "stack",
                "deploy",
                "--resolve-image",
                "never",
                "-c",
                str(self.compose),
                self.stack,
            ],
            env=self.env(version),
        )
        self.wait("/version.txt", version)

    def get(self, path: str) -> tuple[int, str]:
        host, port = self.args.https.rsplit(":", 1)
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--connect-to",
            f"{self.domain}:443:{host}:{port}",
        ]
        if self.args.cacert:
            argv += ["--cacert", self.args.cacert]
        proc = subprocess.run(
            [*argv, f"https://{self.domain}{path}"], capture_output=True, timeout=15, check=False
        )
        body, _, code = proc.stdout.decode(errors="replace").rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def wait(self, path: str, text: str) -> None:
        """Until the route answers `path` with `text` through Traefik (TLS verified)."""
        deadline = time.monotonic() + DEADLINE_S
        status, body = 0, ""
        while time.monotonic() < deadline:
            status, body = self.get(path)
            if status == 200 and text in body:
                say(f"https://{self.domain}{path} -> 200 {body.strip()[:60]!r}")
                return
            time.sleep(1)
        raise TierFailed(f"https://{self.domain}{path} -> {status} {body.strip()[:80]!r}")

    def container(self) -> str:
        out = run(
            [
                "docker",
                "ps",
                "-q",
                "--filter",
                f"label=com.docker.swarm.service.name={self.stack}_app",
            ]
        )
        if not out.split():
            raise TierFailed(f"no running container of {self.stack}_app")
        return out.split()[0]

    def volume(self) -> str:
        return f"{self.stack}_content"

    def remove(self) -> bool:
        """docker stack rm, then the stack's volumes once its containers are gone."""
        subprocess.run(["docker", "stack", "rm", self.stack], capture_output=True, check=False)
        label = f"label=com.docker.stack.namespace={self.stack}"
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            left = [
                subprocess.run(
                    ["docker", kind, "ls", "-q", "--filter", label],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.split()
                for kind in ("service", "network")
            ]
            containers = subprocess.run(
                ["docker", "ps", "-aq", "--filter", label],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if not any(left) and not containers:
                break
            time.sleep(0.5)
        vols = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", label],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for vol in vols:
            subprocess.run(["docker", "volume", "rm", vol], capture_output=True, check=False)
        gone = not subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", label],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return gone and time.monotonic() < deadline


def tier_install(app: App) -> list[str]:
    app.deploy("1.0.0")
    app.wait("/", "custom-html")
    return ["deploy 1.0.0", "route answers over TLS"]


def tier_upgrade(app: App) -> list[str]:
    app.deploy("1.1.0")
    return ["deploy 1.1.0 over 1.0.0", "route serves the new version"]


def tier_backup_restore(app: App) -> list[str]:
    marker = secrets.token_hex(8)
    run(["docker", "exec", app.container(), "sh", "-c", f"echo {marker} > /srv/site/marker.txt"])
    backup = run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{app.volume()}:/data:ro",
            HELPER_IMAGE,
            "sh",
            "-c",
            "cd /data && busybox tar -cf - . | busybox base64",
        ]
    )
    if not app.remove():
        raise TierFailed(f"{app.stack} could not be removed before the restore")
    app.deploy("1.1.0")
    run(
        [
            "docker",
            "run",
            "--rm",
            "-i",
            "-v",
            f"{app.volume()}:/data",
            HELPER_IMAGE,
            "sh",
            "-c",
            "busybox base64 -d | busybox tar -C /data -xf -",
        ],
        stdin=backup.encode(),
    )
    app.wait("/site/marker.txt", marker)
    return [
        "marker written",
        "volume backed up",
        "app and volume removed",
        "redeployed",
        "restored",
        "marker read back through the route",
    ]


def tier_functional(app: App) -> list[str]:
    status, body = app.get("/")
    if status != 200 or "custom-html" not in body:
        raise TierFailed(f"/ -> {status} {body[:80]!r}")
    status, _ = app.get("/no-such-page")
    if status != 404:
        raise TierFailed(f"/no-such-page -> {status}, expected 404")
    return ["home page", "404 for a missing page"]


TIERS = (
    ("install", tier_install),
    ("upgrade", tier_upgrade),
    ("backup_restore", tier_backup_restore),
    ("functional", tier_functional),
)


# The twin's tiers as cc-ci's stages, and the rung each stage feeds.
TIER_STAGES = {"backup_restore": ["backup", "restore"], "functional": ["custom"]}
STAGE_RUNG = {
    "install": "install",
    "upgrade": "upgrade",
    "backup": "backup_restore",
    "restore": "backup_restore",
    "custom": "functional",
}
RUNGS = ("install", "upgrade", "backup_restore", "functional", "lint")
RUNG_STATUS = {"pass": "pass", "fail": "fail", "error": "fail"}


def rungs_of(results: dict[str, str]) -> dict[str, str]:
    """Each rung's status from its stages: a failed or errored stage fails it; one that did
    not run (an earlier tier failed) leaves it unverified. The twin has no abra, so lint is
    never verified here."""
    rungs: dict[str, str] = {}
    for stage, rung in STAGE_RUNG.items():
        status = {"pass": "pass", "fail": "fail", "error": "fail"}.get(
            results.get(stage, ""), "unver"
        )
        if rungs.get(rung, "pass") == "pass" or status == "fail":
            rungs[rung] = status
    rungs["lint"] = "unver"
    return rungs


def level_of(rungs: dict[str, str]) -> int:
    """The highest passed rung with every rung below it passed or skipped."""
    level = 0
    for i, rung in enumerate(RUNGS, start=1):
        if rungs.get(rung) == "pass":
            level = i
        elif rungs.get(rung) != "skip":
            break
    return level


def results_doc(
    args: argparse.Namespace, stages: list[dict[str, Any]], clean: bool
) -> dict[str, Any]:
    results = {s["name"]: s["status"] for s in stages}
    rungs = rungs_of(results)
    return {
        "schema": 2,
        "recipe": args.recipe,
        "version": "1.1.0",
        "pr": int(args.pr) if args.pr.isdigit() else None,
        "ref": args.ref,
        "run_id": int(args.run_id) if args.run_id.isdigit() else args.run_id,
        "finished": time.time(),
        "stages": stages,
        "results": results,
        "level": level_of(rungs),
        "rungs": rungs,
        "skips": {
            "intentional": {},
            "unintentional": [r for r, v in rungs.items() if v == "unver"],
        },
        "lint": {"status": "unver", "detail": "no abra on the twin", "rules_failed": []},
        # The twin's recipe takes no secret: there is none to leak into the artifacts.
        "flags": {"clean_teardown": clean, "no_secret_leak": True},
        "screenshot": None,
        "summary_card": None,
        "customization": {},
    }


def run_tiers(app: App) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    failed = False
    for name, tier in TIERS:
        names = (
            ["backup", "restore"]
            if name == "backup_restore"
            else ["custom"]
            if name == "functional"
            else [name]
        )
        if failed:
            continue  # not run: its rung stays unverified
        t0 = time.monotonic()
        try:
            tests = tier(app)
            if name == app.args.fail_tier:
                raise TierFailed(f"{name} failed on purpose (--fail-tier)")
            ms = int((time.monotonic() - t0) * 1000)
            status, cases = (
                "pass",
                [{"name": t, "status": "pass", "ms": ms // len(tests)} for t in tests],
            )
            say(f"tier {name}: pass")
        except (TierFailed, subprocess.TimeoutExpired) as exc:
            failed = True
            status, cases = "fail", [{"name": str(exc)[:300], "status": "fail", "ms": 0}]
            say(f"tier {name}: FAIL {exc}")
        for stage in names:
            stages.append({"name": stage, "status": status, "tests": cases})
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--results", default=os.environ.get("PVCHECK_RESULTS"))
    parser.add_argument(
        "--run-id", default=os.environ.get("DRONE_BUILD_NUMBER", f"manual-{os.getpid()}")
    )
    parser.add_argument("--pr", default="")
    parser.add_argument("--ref", default="0000000000ab")
    parser.add_argument("--recipes", default=str(HERE / "recipes"))
    parser.add_argument("--lock-dir", default="/run/lock")
    parser.add_argument("--active-dir", help="also register in this folder (the old registry)")
    parser.add_argument("--domain-suffix", default="ci.commoninternet.net")
    parser.add_argument("--https", default="127.0.0.1:443")
    parser.add_argument("--cacert")
    parser.add_argument("--leave-stack", action="store_true", help="fault: skip the teardown")
    parser.add_argument("--fail-tier", help="fault: this tier fails after it ran")
    args = parser.parse_args()
    if not args.results:
        parser.error("--results (or PVCHECK_RESULTS) is required")
    app = App(args)
    say(f"recipe {args.recipe}: app {app.domain}, stack {app.stack}, run {args.run_id}")
    hold_app_lock(args.lock_dir, app.domain)
    marker = Path(args.active_dir) / app.domain if args.active_dir else None
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{args.recipe} pid {os.getpid()}\n")
    clean = False
    try:
        stages = run_tiers(app)
    finally:
        if args.leave_stack:
            say(f"leaving {app.stack} behind (--leave-stack)")
        else:
            clean = app.remove()
            say(f"teardown of {app.stack}: {'clean' if clean else 'NOT clean'}")
        if marker is not None:
            marker.unlink(missing_ok=True)
    doc = results_doc(args, stages, clean)
    Path(args.results).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=Path(args.results).parent, delete=False) as out:
        json.dump(doc, out, indent=2)
    os.chmod(out.name, 0o644)
    os.replace(out.name, args.results)
    return 1 if any(s["status"] == "fail" for s in stages) else 0


if __name__ == "__main__":
    sys.exit(main())
