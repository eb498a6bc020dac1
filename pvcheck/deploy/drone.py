"""The Drone driver: trigger one recipe-CI build through the Drone HTTP API, poll it to the
end within a deadline, and read its step results as tiers.

API (docs.drone.io/api/builds): POST /api/repos/{ns}/{name}/builds?branch=B&KEY=VALUE creates a
build with custom parameters; GET .../builds/{number} reads it; DELETE .../builds/{number}
stops it; GET .../builds lists recent ones (to find a running sweep). The create call is never
retried: a retry after a lost answer could start a second build.
The token comes from the environment or a Prefect Secret block and is never logged or written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from pvcheck import masking, progress
from pvcheck.config import Config, DroneDriverConfig
from pvcheck.deploy.attach import AttachmentSampler, fixed_stack, watched_stacks
from pvcheck.errors import ConfigError, PvcheckError
from pvcheck.harnessresults import (
    STAGE_TIER,
    ResultsError,
    fetch_results,
    parse_results,
    results_stack,
)
from pvcheck.liveness import runs_of_build
from pvcheck.procs import printable
from pvcheck.seams import DeployOutcome, HostCommands, Seams, TierResult, TierStatus

log = logging.getLogger(__name__)

# A Drone answer is a build record of a few KB; anything past this is refused, not parsed.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
ANSWER_DEADLINE_S = 60.0

FINISHED = {"success", "failure", "error", "killed", "skipped", "declined"}
ACTIVE = {"pending", "running", "blocked", "waiting_on_dependencies"}
STEP_STATUS = {
    "success": TierStatus.PASS,
    "failure": TierStatus.FAIL,
    "error": TierStatus.FAIL,
    "killed": TierStatus.FAIL,
    "skipped": TierStatus.SKIP,
}


class DroneError(Exception):
    """The Drone API refused or broke; the message never contains the token."""


def drone_token(cfg: DroneDriverConfig, source: str) -> str:
    if cfg.token_block:
        from prefect.blocks.system import Secret

        value = str(Secret.load(cfg.token_block).get())  # type: ignore[union-attr]
        masking.register(value)
        return value
    token = os.environ.get(cfg.token_env, "")
    if not token:
        raise ConfigError(
            source, "deploy.drone.token_env", f"environment variable {cfg.token_env} is not set"
        )
    masking.register(token)
    return token


def tiers_from_build(build: dict[str, Any]) -> list[TierResult]:
    """Pure: every step whose name names a tier becomes that tier's result (a pipeline with
    a step per tier; cc-ci's runs its harness in one step: deploy.drone.results_path)."""
    out: dict[str, TierResult] = {}
    for stage in _dicts(build.get("stages")):
        for step in _dicts(stage.get("steps")):
            name = str(step.get("name", "")).lower()
            tier = next((t for key, t in STAGE_TIER.items() if key in name), None)
            if tier is None:
                continue
            status = STEP_STATUS.get(str(step.get("status")), TierStatus.UNVERIFIED)
            # A failing step of a tier wins over a passing one of the same tier.
            if tier not in out or status == TierStatus.FAIL:
                out[tier] = TierResult(
                    tier, status, f"step {step.get('name')}: {step.get('status')}"
                )
    return list(out.values())


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list; anything else in an answer is ignored, not trusted."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class DroneClient:
    def __init__(
        self, cfg: DroneDriverConfig, token: str, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.cfg = cfg
        self.base = f"/api/repos/{cfg.repo}/builds"
        self.http = httpx.Client(
            base_url=cfg.url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0),
            transport=transport,
            trust_env=False,
        )

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        """One request; the answer is read up to MAX_ANSWER_BYTES and must be JSON."""
        with self.http.stream(method, path, params=params) as resp:
            if resp.status_code == 401:
                raise DroneError("Drone answered 401 Unauthorized: check the token")
            if resp.status_code >= 400:
                raise DroneError(f"Drone answered {resp.status_code} to {method} {path}")
            body = bytearray()
            deadline = time.monotonic() + ANSWER_DEADLINE_S
            for chunk in resp.iter_bytes():
                body += chunk
                # The read timeout is per read: an answer that trickles a byte a minute
                # would never end without a deadline for the whole of it.
                if time.monotonic() > deadline:
                    raise DroneError(
                        f"Drone's answer to {method} {path} took more than "
                        f"{ANSWER_DEADLINE_S:g}s; refused"
                    )
                if len(body) > MAX_ANSWER_BYTES:
                    raise DroneError(
                        f"Drone's answer to {method} {path} is larger than {MAX_ANSWER_BYTES} "
                        "bytes; refused"
                    )
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise DroneError(f"Drone answered non-JSON to {method} {path}") from None

    def create(self, recipe: str) -> dict[str, Any]:
        params = {"branch": self.cfg.branch, self.cfg.recipe_param: recipe}
        build = self._call("POST", self.base, params)
        if not isinstance(build, dict) or not isinstance(build.get("number"), int):
            raise DroneError("Drone's build answer has no build number")
        return build

    def get(self, number: int) -> dict[str, Any]:
        build = self._call("GET", f"{self.base}/{number}")
        if not isinstance(build, dict) or not isinstance(build.get("status"), str):
            raise DroneError(f"Drone's answer for build {number} has no status")
        return build

    def stop(self, number: int) -> None:
        self.http.delete(f"{self.base}/{number}")

    def running(self) -> list[str]:
        return [
            f"Drone build {b.get('number')} {b.get('status')}"
            for b in _dicts(self._call("GET", self.base))
            if b.get("status") in ACTIVE
        ]

    def link(self, number: int) -> str:
        return f"{self.cfg.url.rstrip('/')}/{self.cfg.repo}/{number}"


def running_builds(cfg: Config, client: DroneClient | None = None) -> list[str]:
    """Running Drone builds, when a Drone API is configured and counts as active runs. An API
    that cannot be asked is reported busy: pvcheck cannot tell that no build runs."""
    deploy = cfg.deploy
    if deploy is None or deploy.drone is None or not deploy.active_runs.drone_builds:
        return []
    try:
        client = client or DroneClient(deploy.drone, drone_token(deploy.drone, str(cfg.source)))
        return client.running()
    except (DroneError, httpx.HTTPError) as exc:
        return [f"Drone API cannot be asked ({type(exc).__name__}: {exc}); a build may run"]


class DroneDriver:
    def __init__(
        self,
        seams: Seams,
        cfg: Config,
        run_id: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        assert cfg.deploy is not None and cfg.deploy.drone is not None
        self.swarm, self.cfg, self.run_id = seams.swarm, cfg, run_id
        self.host: HostCommands = seams.host
        self.deploy_cfg, self.drone = cfg.deploy, cfg.deploy.drone
        self.client = DroneClient(self.drone, drone_token(self.drone, str(cfg.source)), transport)

    def busy(self) -> list[str]:
        return running_builds(self.cfg, self.client)

    def run(self, poll_s: float | None = None) -> DeployOutcome:
        deploy = self.deploy_cfg
        fixed = fixed_stack(deploy.stack, deploy.stack_pattern, deploy.recipe)
        watched = fixed or f"a stack matching {deploy.stack_pattern}"
        outcome = DeployOutcome("drone", deploy.recipe, watched)
        poll = self.drone.poll_s if poll_s is None else poll_s
        with AttachmentSampler(
            self.swarm, self.cfg.network.name, fixed, deploy.stack_pattern
        ) as sampler:
            try:
                self._run(outcome, poll)
            except (DroneError, httpx.HTTPError) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
        # The build's own stack, when its harness run was found holding its app's flock:
        # other harness runs beside it (a second runner, a sweep) are not the proof's.
        own = fixed or self._own_stack(outcome, sampler)
        outcome.attached = bool(sampler.services_of(own)) if own else bool(sampler.seen)
        outcome.attach_detail = sampler.describe(own)
        if not own and len(sampler.stacks) > 1:
            outcome.attach_detail += (
                "; this build's own harness run was not found on the host, so every stack "
                "matching the pattern counts as the proof's"
            )
        outcome.stacks = watched_stacks(own, sampler)
        return outcome

    def _find_run(self, outcome: DeployOutcome, number: int) -> None:
        """Which harness run (app domain) is build `number`'s: the flock its process holds.
        Taken only when exactly one run claims the build; more is someone else's claim too,
        and then none is (the pattern's stacks are watched, and the detail says so)."""
        runs = self.deploy_cfg.active_runs
        if "run" in outcome.info or "runs" in outcome.info or runs.lock_folder is None:
            return
        try:
            found = runs_of_build(self.host, str(runs.lock_folder), runs.lock_pattern, number)
        except PvcheckError as exc:  # the host did not answer this time; the next poll asks
            log.info("Drone build %d: its harness run not looked up: %s", number, exc)
            return
        if len(found) == 1:
            outcome.info["run"] = printable(found[0])
            log.info("Drone build %d runs %s (its process holds that app's flock)",
                     number, outcome.info["run"])  # fmt: skip
        elif found:
            outcome.info["runs"] = printable(", ".join(found))
            log.warning("Drone build %d: several runs claim it (%s); none is taken",
                        number, outcome.info["runs"])  # fmt: skip

    def _own_stack(self, outcome: DeployOutcome, sampler: AttachmentSampler) -> str | None:
        """The build's stack from its harness run: a name the harness pattern admits and that
        appeared on the network during this run; otherwise none (and the detail says why)."""
        pattern = self.deploy_cfg.stack_pattern
        own = results_stack({"domain": outcome.info["run"]}) if "run" in outcome.info else None
        if own and pattern and re.search(pattern, own) and own in sampler.stacks:
            return own
        return None

    def _run(self, outcome: DeployOutcome, poll: float) -> None:
        build = self.client.create(self.deploy_cfg.recipe)  # once: never retried
        number = int(build["number"])
        outcome.info.update(build=str(number), link=self.client.link(number))
        log.info("Drone build %d started: %s", number, outcome.info["link"])
        started = time.monotonic()
        deadline = started + self.drone.timeout_s
        while build.get("status") not in FINISHED:
            progress.report(f"Drone build {number}: {build.get('status')}", started, deadline)
            if build.get("status") == "running":
                self._find_run(outcome, number)
            if time.monotonic() >= deadline:
                self.client.stop(number)
                outcome.error = (
                    f"Drone build {number} did not finish within {self.drone.timeout_s:g}s; stopped"
                )
                outcome.info["status"] = str(build.get("status"))
                return
            time.sleep(poll)
            build = self.client.get(number)
        outcome.info["status"] = str(build["status"])
        log.info("Drone build %d finished: %s", number, build["status"])
        if self.drone.results_path:
            path = Path(self.drone.results_path.replace("{build}", str(number)))
            try:
                outcome.take(parse_results(fetch_results(self.host, path)))
            except ResultsError as exc:
                outcome.error = f"Drone build {number} ended {build['status']}: {exc}"
                return
            outcome.info["results"] = str(path)
        else:
            outcome.tiers = tiers_from_build(build)
        if build["status"] != "success" and not any(
            t.status == TierStatus.FAIL for t in outcome.tiers
        ):
            outcome.error = f"Drone build {number} ended {build['status']}"
