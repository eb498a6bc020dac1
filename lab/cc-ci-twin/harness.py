#!/usr/bin/env python3
"""The cc-ci twin's recipe harness: what a `!testme` build runs on the host.

Like cc-ci's harness it takes a recipe, registers the run in the active-run folder while it
runs, deploys the recipe with `docker stack deploy` as a generated app
`<4 chars>-<6 hex>.<domain suffix>` (stack `<4 chars>-<6 hex>_<suffix with dots as _>`, the
way abra names stacks) joining `proxy`, runs its tiers through the host's Traefik over TLS,
writes results.json and tears the app down. Only the standard library, the docker CLI and
curl: it does not know pvcheck.

Usage: harness.py RECIPE --results FILE [--recipes DIR] [--active-dir DIR]
       [--domain-suffix ci.commoninternet.net] [--https 127.0.0.1:443] [--cacert CA]
       [--leave-stack]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def app_name(recipe: str, suffix: str) -> tuple[str, str]:
    """(domain, stack): `cust-1a2b3c.ci.commoninternet.net`, `cust-1a2b3c_ci_commoninternet_net`."""
    head = re.sub(r"[^a-z0-9]", "", recipe.lower())[:4]
    head += "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4 - len(head)))
    domain = f"{head}-{secrets.token_hex(3)}.{suffix}"
    return domain, domain.replace(".", "_")


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.domain, self.stack = app_name(args.recipe, args.domain_suffix)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--results", default=os.environ.get("PVCHECK_RESULTS"))
    parser.add_argument("--recipes", default=str(HERE / "recipes"))
    parser.add_argument("--active-dir", default="/run/cc-ci-active")
    parser.add_argument("--domain-suffix", default="ci.commoninternet.net")
    parser.add_argument("--https", default="127.0.0.1:443")
    parser.add_argument("--cacert")
    parser.add_argument("--leave-stack", action="store_true", help="fault: skip the teardown")
    args = parser.parse_args()
    if not args.results:
        parser.error("--results (or PVCHECK_RESULTS) is required")
    app = App(args)
    say(f"recipe {args.recipe}: app {app.domain}, stack {app.stack}")
    active = Path(args.active_dir)
    active.mkdir(parents=True, exist_ok=True)
    marker = active / app.domain
    marker.write_text(f"{args.recipe} pid {os.getpid()}\n")
    stages: list[dict[str, Any]] = []
    clean = False
    try:
        failed = False
        for name, tier in TIERS:
            if failed:
                stages.append(
                    {
                        "name": name,
                        "status": "skip",
                        "tests": [],
                        "reason": "an earlier tier failed",
                    }
                )
                continue
            t0 = time.monotonic()
            try:
                tests = tier(app)
                stages.append(
                    {
                        "name": name,
                        "status": "pass",
                        "tests": [{"name": t, "status": "pass"} for t in tests],
                        "seconds": round(time.monotonic() - t0, 1),
                    }
                )
                say(f"tier {name}: pass")
            except (TierFailed, subprocess.TimeoutExpired) as exc:
                failed = True
                stages.append(
                    {"name": name, "status": "fail", "tests": [], "reason": str(exc)[:300]}
                )
                say(f"tier {name}: FAIL {exc}")
    finally:
        if args.leave_stack:
            say(f"leaving {app.stack} behind (--leave-stack)")
        else:
            clean = app.remove()
            say(f"teardown of {app.stack}: {'clean' if clean else 'NOT clean'}")
        marker.unlink(missing_ok=True)
    doc = {
        "recipe": args.recipe,
        "version": "1.1.0",
        "run_id": f"twin-{secrets.token_hex(4)}",
        "domain": app.domain,
        "stages": stages,
        "rungs": [s["name"] for s in stages if s["status"] == "pass"],
        "flags": {"clean_teardown": clean},
    }
    with tempfile.NamedTemporaryFile("w", dir=Path(args.results).parent, delete=False) as out:
        json.dump(doc, out, indent=2)
    os.replace(out.name, args.results)
    return 1 if any(s["status"] == "fail" for s in stages) else 0


if __name__ == "__main__":
    sys.exit(main())
