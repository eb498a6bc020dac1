#!/usr/bin/env python3
"""The cc-ci twin's Drone API stand-in: the part of Drone's HTTP API a recipe build uses.

POST /api/repos/{owner}/{name}/builds?branch=B&KEY=VALUE creates a custom build (status
pending, then running) that runs the harness on this host with the RECIPE parameter, as
cc-ci's exec runner does: one pipeline step runs the whole harness, which writes the run's
results.json under `<runs dir>/<build number>/` (cc-ci: /var/lib/cc-ci-runs/<n>/, published
as runs/<n>/results.json; lab/cc-ci-twin/FACTS.md). At most `--runners` builds run at once
(cc-ci: 2), the rest wait as pending. GET …/builds lists recent builds, newest first (no
stages, as Drone's list does); GET …/builds/{n} returns one build with its stage and its one
step; DELETE …/builds/{n} kills it. Every call needs `Authorization: Bearer <token>` (the
token file given at start); 401 otherwise.

Usage: drone_api.py [--listen ADDR] --port P --token-file F --repo owner/name --workdir DIR
       [--runs-dir DIR] [--runners N] -- HARNESS ARGV...
({recipe}, {results} and {build} are replaced in HARNESS ARGV)
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STEP = "recipe-ci"  # the record shows one step running the harness; its exact name is not public


class Builds:
    """Builds of one repository; a fixed number of runners, the rest wait as pending."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.builds: dict[int, dict[str, Any]] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.runners = threading.Semaphore(args.runners)
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runs = Path(args.runs_dir or self.workdir / "runs")

    def create(self, params: dict[str, str], branch: str) -> dict[str, Any]:
        now = int(time.time())
        with self.lock:
            number = max(self.builds, default=0) + 1
            build: dict[str, Any] = {
                "id": number,
                "repo_id": 1,
                "trigger": "@api",
                "number": number,
                "status": "pending",
                "event": "custom",
                "action": "",
                "link": "",
                "message": f"custom build {params}",
                "ref": f"refs/heads/{branch}",
                "source": branch,
                "target": branch,
                "author_login": "pvcheck",
                "sender": "pvcheck",
                "params": params,
                "started": 0,
                "finished": 0,
                "created": now,
                "updated": now,
                "version": 1,
                "stages": [
                    {
                        "id": number,
                        "build_id": number,
                        "number": 1,
                        "name": "recipe",
                        "kind": "pipeline",
                        "type": "exec",
                        "status": "pending",
                        "exit_code": 0,
                        "machine": os.uname().nodename,
                        "os": "linux",
                        "arch": "amd64",
                        "started": 0,
                        "stopped": 0,
                        "steps": [],
                    }
                ],
            }
            self.builds[number] = build
        threading.Thread(target=self._run, args=(number,), daemon=True).start()
        return self.view(number, with_stages=True)

    def view(self, number: int, with_stages: bool) -> dict[str, Any]:
        with self.lock:
            build = json.loads(json.dumps(self.builds[number]))
        if not with_stages:
            build.pop("stages", None)
        return build

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            numbers = sorted(self.builds, reverse=True)[:25]
        return [self.view(n, with_stages=False) for n in numbers]

    def kill(self, number: int) -> bool:
        with self.lock:
            proc = self.procs.get(number)
            build = self.builds.get(number)
            if build is None:
                return False
            if build["status"] in ("pending", "running"):
                build["status"] = "killed"
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        return True

    def _set(self, number: int, **fields: Any) -> None:
        with self.lock:
            build = self.builds[number]
            stage = build["stages"][0]
            for key, value in fields.items():
                if key == "steps":
                    stage["steps"] = value
                else:
                    build[key] = value
                    if key in ("status", "started", "exit_code"):
                        stage[key] = value
            if "finished" in fields:
                stage["stopped"] = fields["finished"]
            build["updated"] = int(time.time())

    def _run(self, number: int) -> None:
        with self.runners:
            with self.lock:
                build = self.builds[number]
                if build["status"] == "killed":
                    return
                recipe = build["params"].get(self.args.recipe_param, "")
            folder = self.runs / str(number)
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            results = folder / "results.json"
            results.unlink(missing_ok=True)
            log = self.workdir / f"build-{number}.log"
            argv = [
                a.replace("{recipe}", recipe)
                .replace("{results}", str(results))
                .replace("{build}", str(number))
                for a in self.args.harness
            ]
            self._set(
                number,
                status="running",
                started=int(time.time()),
                steps=[
                    {
                        "id": 1,
                        "step_id": number,
                        "number": 1,
                        "name": STEP,
                        "status": "running",
                        "exit_code": 0,
                        "started": int(time.time()),
                        "stopped": 0,
                    }
                ],
            )
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**os.environ, "DRONE_BUILD_NUMBER": str(number)},
                )
                with self.lock:
                    self.procs[number] = proc
                rc = proc.wait()
            steps = self._steps(number, results, rc)
            with self.lock:
                killed = self.builds[number]["status"] == "killed"
            status = "killed" if killed else ("success" if rc == 0 else "failure")
            self._set(number, status=status, finished=int(time.time()), exit_code=rc, steps=steps)

    def _steps(self, number: int, results: Path, rc: int) -> list[dict[str, Any]]:
        """The pipeline's one step: the harness, passed or failed by its exit code (tiers are
        in results.json, never steps)."""
        now = int(time.time())
        return [
            {
                "id": 1,
                "step_id": number,
                "number": 1,
                "name": STEP,
                "status": "success" if rc == 0 else "failure",
                "exit_code": rc,
                "started": now,
                "stopped": now,
            }
        ]


def handler(builds: Builds, token: str, repo: str) -> type[BaseHTTPRequestHandler]:
    path_re = re.compile(rf"^/api/repos/{re.escape(repo)}/builds(?:/(\d+))?/?$")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[re.Match[str] | None, dict[str, str]]:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            return path_re.match(url.path), query

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._send(401, {"message": "Unauthorized"})
            return False

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/"):
                self._send(200, {"status": "ok"})
                return
            match, _ = self._route()
            if match is None:
                self._send(404, {"message": "Not Found"})
            elif self._authorized():
                if match.group(1) is None:
                    self._send(200, builds.listing())
                elif int(match.group(1)) in builds.builds:
                    self._send(200, builds.view(int(match.group(1)), with_stages=True))
                else:
                    self._send(404, {"message": "Not Found"})

        def do_POST(self) -> None:
            match, query = self._route()
            if match is None or match.group(1) is not None:
                self._send(404, {"message": "Not Found"})
            elif self._authorized():
                branch = query.pop("branch", "main")
                self._send(200, builds.create(query, branch))

        def do_DELETE(self) -> None:
            match, _ = self._route()
            if match is None or match.group(1) is None:
                self._send(404, {"message": "Not Found"})
            elif self._authorized():
                found = builds.kill(int(match.group(1)))
                self._send(204 if found else 404, {})

        def log_message(self, fmt: str, *args: Any) -> None:
            print(f"[drone-api] {self.address_string()} {fmt % args}", flush=True)

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1", help="the address to serve on")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--recipe-param", default="RECIPE")
    parser.add_argument(
        "--runs-dir", help="where each build's run folder goes (default WORKDIR/runs)"
    )
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("harness", nargs="+")
    args = parser.parse_args()
    token = Path(args.token_file).read_text().strip()
    builds = Builds(args)
    server = ThreadingHTTPServer((args.listen, args.port), handler(builds, token, args.repo))
    print(f"[drone-api] serving {args.repo} on {args.listen}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
