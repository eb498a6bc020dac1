"""The built-in compose driver: deploy the recipe the way an operator does, with the docker CLI
(`docker stack deploy` of the recipe's compose file, interpolated from its env file as abra
does), run its four tiers for real, then `docker stack rm` it and remove what is left by this
run's label.

- install: deploy, wait until every service runs its spec and the route answers;
- upgrade: deploy again with the upgrade's env (and file); the recipe's healthcheck gates the
  start-first update, and swarm's rollback is a failed tier;
- backup_restore: as backupbot does for a service labelled `backupbot.backup=true`: write a
  marker into the backed-up path, back it up, remove the stack and its volumes, deploy again,
  restore, and read the marker back through the route;
- functional: the config (rendered by swarm) and the secret (generated here, as
  `abra app secret generate` does) reached the app, read through the route.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pvcheck.compose import Confinement, normalise_labels, prepare, read_env_file
from pvcheck.config import ComposeDriverConfig, Config, RouteConfig
from pvcheck.deploy.attach import AttachmentSampler
from pvcheck.seams import DeployOutcome, RouteObservation, Seams, SwarmApi, TierResult, TierStatus
from pvcheck.stackcli import StackError
from pvcheck.stacks import converged, remove_labelled, remove_stack_gently, wait_running
from pvcheck.swarm import LABEL_ROLE, LABEL_RUN, LABEL_STACK, POLL_S

log = logging.getLogger(__name__)

MARKER_FILE = "pvcheck-marker.txt"
MAX_BACKUP_BYTES = 64 * 1024 * 1024  # the backup tier's archive is held in memory
BACKUP_LABEL, BACKUP_PATH_LABEL = "backupbot.backup", "backupbot.backup.path"


def recipe_stack_name(recipe: str, run_id: str) -> str:
    """A name unique to the run, so a leftover can never be mistaken for a live recipe."""
    return f"pvc-{recipe}-{run_id.rsplit('-', 1)[-1]}"


def app_env(compose: ComposeDriverConfig, stack: str) -> dict[str, str]:
    """The app's variables as abra gives them: its env file, then STACK_NAME and DOMAIN."""
    env = read_env_file(compose.env_file) if compose.env_file else {}
    return {**env, "STACK_NAME": stack, "DOMAIN": compose.domain or env.get("DOMAIN", "")}


@dataclass(frozen=True)
class Prepared:
    text: str  # the compose file for the CLI
    doc: dict[str, Any]  # the same, read back: what the recipe declares, interpolated


class ComposeDriver:
    def __init__(
        self,
        seams: Seams,
        cfg: Config,
        run_id: str,
        open_engine: Callable[[], SwarmApi] | None = None,
    ) -> None:
        """Everything through the run's seams: the engine, the docker CLI, and HTTP (from the
        host when the route says so). `open_engine` gives the attachment sampler its own
        connection, polled while the deploy uses this one."""
        assert cfg.deploy is not None and cfg.deploy.compose is not None
        self.swarm, self.cfg, self.run_id = seams.swarm, cfg, run_id
        self.http = seams.http
        self.open_engine = open_engine or (lambda: seams.swarm)
        self.deploy_cfg = cfg.deploy
        self.compose = cfg.deploy.compose
        self.stack = recipe_stack_name(cfg.deploy.recipe, run_id)
        self.labels = {LABEL_RUN: run_id, LABEL_ROLE: "recipe"}
        self.cli = seams.stacks
        self.env = app_env(self.compose, self.stack)
        self._folders: list[Path] = []
        # sha256 of each secret value made here, by the secret's name and by its compose key
        self.secret_sha: dict[str, str] = {}
        self.secret_of_key: dict[str, str] = {}
        self.page = self.compose.route  # the app's page as the running version shows it

    def busy(self) -> list[str]:
        from pvcheck.deploy.drone import running_builds

        return running_builds(self.cfg)

    # --- the steps -------------------------------------------------------------------------
    def _prepare(self, path: Path, env: Mapping[str, str]) -> Prepared:
        # The recipe reaches only its own stack's objects, the shared network and files in
        # its folder (copied, unfollowed, into this run's private folder).
        files_to = Path(tempfile.mkdtemp(prefix="pvcheck-recipe-"))
        self._folders.append(files_to)
        confined = Confinement(self.stack, path.parent, files_to, self.cfg.network.name)
        text, overridden = prepare(path, env, self.labels, confinement=confined)
        if overridden:
            log.warning(
                "%s sets pvcheck's own labels %s; pvcheck's values were kept", path, overridden
            )
        doc = yaml.safe_load(text)
        return Prepared(text, doc if isinstance(doc, dict) else {})

    def _deploy(self, prepared: Prepared, where: Path) -> None:
        self._generate_secrets(prepared.doc)
        self.cli.stack_deploy(self.stack, prepared.text, {}, where=str(where))

    def _generate_secrets(self, doc: dict[str, Any]) -> None:
        """The app's external secrets (named after its stack), made as `abra app secret
        generate` does, once; the value is never logged or kept, only its hash."""
        for key, decl in (doc.get("secrets") or {}).items():
            name = str((decl or {}).get("name", key))
            if not (decl or {}).get("external") or not name.startswith(f"{self.stack}_"):
                continue  # not this app's own: abra would not generate it either
            if name not in self.secret_sha:  # a new version (an upgrade) is a new secret
                value = secrets.token_urlsafe(32).encode()
                self.cli.secret_create(name, value, self.labels)
                self.secret_sha[name] = hashlib.sha256(value).hexdigest()
            self.secret_of_key[key] = name

    def _route(self, path: str = "/", body: str | None = None) -> RouteConfig:
        base = self.compose.route
        url = base.url.rstrip("/") + path
        return base.model_copy(update={"url": url, "body_contains": body})

    def _answers(self, route: RouteConfig, deadline: float) -> tuple[bool, RouteObservation]:
        while True:
            (obs,) = self.http.probe([route])
            ok = obs.answers(route)
            if ok or time.monotonic() >= deadline:
                return ok, obs
            time.sleep(POLL_S)

    def _converged_tier(self, tier: str, route: RouteConfig | None = None) -> TierResult:
        timeout = self.deploy_cfg.converge_timeout_s
        deadline = time.monotonic() + timeout
        states = wait_running(self.swarm, self.stack, timeout)
        if not converged(states):
            shown = {name: str(state) for name, state in states.items()}
            gave_up = any(s.gave_up for s in states.values())
            why = "swarm rolled the update back" if gave_up else f"did not converge in {timeout:g}s"
            return TierResult(tier, TierStatus.FAIL, f"{why}: {shown}")
        route = route or self.page
        ok, obs = self._answers(route, deadline)
        answer = obs.status if obs.status is not None else obs.error
        detail = f"{', '.join(states)} running; {route.url} -> {answer}"
        if not ok and route.body_contains:
            detail += f" (expected {route.body_contains!r} in the page)"
        return TierResult(tier, TierStatus.PASS if ok else TierStatus.FAIL, detail)

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> DeployOutcome:
        tiers = self.deploy_cfg.tiers
        outcome = DeployOutcome("compose", self.deploy_cfg.recipe, self.stack)
        net = self.cfg.network.name
        with AttachmentSampler(self.open_engine(), net, self.stack) as sampler:
            try:
                current = self._prepare(self.compose.file, self.env)
                self._deploy(current, self.compose.file)
                install = self._converged_tier("install")
                outcome.tiers.append(install)
                sampler.sample()  # at least one sample while the app surely runs
                if "upgrade" in tiers:
                    upgrade, current = self._upgrade(install, current)
                    outcome.tiers.append(upgrade)
                if "backup_restore" in tiers:
                    outcome.tiers.append(self._backup_restore(current))
                if "functional" in tiers:
                    outcome.tiers.append(self._functional())
            except StackError as exc:
                outcome.error = str(exc)
            finally:
                outcome.clean_teardown_reported = self._remove()
                for folder in self._folders:
                    shutil.rmtree(folder, ignore_errors=True)
        outcome.stacks = [self.stack]
        outcome.attached = bool(sampler.seen)
        outcome.attach_detail = sampler.describe()
        return outcome

    def _remove(self) -> bool:
        """`docker stack rm`, then whatever it leaves (volumes, the app's secrets) by label."""
        try:
            remove_stack_gently(
                self.swarm, self.cli, self.stack, self.deploy_cfg.converge_timeout_s
            )
        except StackError as exc:
            log.warning("%s", exc)
        left = remove_labelled(
            self.swarm,
            f"{LABEL_RUN}={self.run_id}",
            f"{LABEL_ROLE}=recipe",
            timeout_s=self.deploy_cfg.converge_timeout_s,
        )
        return not any(left.values())

    def _upgrade(self, install: TierResult, current: Prepared) -> tuple[TierResult, Prepared]:
        if install.status != TierStatus.PASS:
            return TierResult(
                "upgrade", TierStatus.FAIL, "not attempted: install did not pass"
            ), current
        env = {**self.env, **self.compose.upgrade_env}
        path = self.compose.upgrade_file or self.compose.file
        upgraded = self._prepare(path, env)
        if upgraded.text == current.text:
            why = "the upgrade deploys nothing new: set upgrade_env or upgrade_file"
            return TierResult("upgrade", TierStatus.FAIL, why), current
        self._deploy(upgraded, path)
        # Converged = the new spec's tasks run (healthy: the healthcheck gates a start-first
        # update) and swarm's update completed; a paused or rolled-back update fails.
        expect = self.compose.upgrade_body
        page = self._route("/", expect) if expect else self.page
        tier = self._converged_tier("upgrade", page)
        if tier.status != TierStatus.PASS:
            return TierResult("upgrade", tier.status, tier.detail), current
        self.page = page
        return TierResult("upgrade", TierStatus.PASS, f"update completed; {tier.detail}"), upgraded

    def _backed_up(self, doc: dict[str, Any]) -> tuple[str, str] | None:
        """(service, path) of the service backupbot backs up, as its labels say."""
        for name, svc in (doc.get("services") or {}).items():
            labels = normalise_labels(((svc or {}).get("deploy") or {}).get("labels"))
            if str(labels.get(BACKUP_LABEL, "")).lower() == "true" and labels.get(
                BACKUP_PATH_LABEL
            ):
                # backupbot takes a comma-separated list; the first path is enough for a proof.
                first = str(labels[BACKUP_PATH_LABEL]).split(",")[0].strip()
                return f"{self.stack}_{name}", first
        return None

    def _backup_restore(self, current: Prepared) -> TierResult:
        reason = self.compose.backup_restore
        if reason:
            return TierResult("backup_restore", TierStatus.SKIP, reason, not_applicable=True)
        target = self._backed_up(current.doc)
        if target is None:
            why = f"no service has {BACKUP_LABEL}=true and a {BACKUP_PATH_LABEL}"
            return TierResult("backup_restore", TierStatus.SKIP, why, not_applicable=True)
        service, path = target
        run_label = f"{LABEL_RUN}={self.run_id}"
        marker = f"pvcheck-{self.run_id}-{secrets.token_hex(4)}"
        write = ["sh", "-c", 'printf "%s\\n" "$1" > "$2/$3"', "sh", marker, path, MARKER_FILE]
        self.cli.exec(self.cli.task_container(service, run_label), write)
        archive = self.cli.exec(
            self.cli.task_container(service, run_label),
            ["tar", "-C", path, "-cf", "-", "."],
            max_stdout=MAX_BACKUP_BYTES,
        )
        log.info("backup of %s:%s: %d bytes", service, path, len(archive))
        # Gone entirely, volumes included, as after losing the host's data.
        remove_stack_gently(self.swarm, self.cli, self.stack, self.deploy_cfg.converge_timeout_s)
        left = remove_labelled(
            self.swarm,
            run_label,
            f"{LABEL_STACK}={self.stack}",
            timeout_s=self.deploy_cfg.converge_timeout_s,
        )
        if any(left.values()):
            return TierResult("backup_restore", TierStatus.FAIL, f"stack not removed: {left}")
        self._deploy(current, self.compose.file)
        redeployed = self._converged_tier("backup_restore")
        if redeployed.status != TierStatus.PASS:
            return TierResult("backup_restore", TierStatus.FAIL, f"redeploy: {redeployed.detail}")
        restored = self.cli.task_container(service, run_label)
        self.cli.exec(restored, ["tar", "-C", path, "-xf", "-"], archive)
        done = (
            f"marker written to {service}:{path}, backed up ({len(archive)} bytes), stack and "
            "volumes removed, redeployed, restored"
        )
        served_at = self.compose.backup_served_at
        if served_at is None:
            # Where the recipe does not serve the path, the marker is read inside the app.
            back = self.cli.exec(restored, ["cat", f"{path}/{MARKER_FILE}"]).decode().strip()
            ok = back == marker
            got = "the marker" if ok else repr(back[:80])
            return TierResult(
                "backup_restore",
                TierStatus.PASS if ok else TierStatus.FAIL,
                f"{done}; read back inside {service}: {got}",
            )
        route = self._route(f"{served_at.rstrip('/')}/{MARKER_FILE}", marker)
        ok, obs = self._answers(route, time.monotonic() + 30)
        answer = obs.status if obs.status is not None else obs.error
        detail = f"{done}; {route.url} -> {answer}"
        return TierResult("backup_restore", TierStatus.PASS if ok else TierStatus.FAIL, detail)

    def _functional(self) -> TierResult:
        """The config swarm rendered and the secret pvcheck generated reached the app."""
        checks = self.compose.functional
        if not checks:
            why = "the recipe declares no functional check (deploy.compose.functional)"
            return TierResult("functional", TierStatus.SKIP, why, not_applicable=True)
        failed = []
        deadline = time.monotonic() + 30
        for check in checks:
            body = check.body.replace("{stack}", self.stack).replace("{domain}", self.env["DOMAIN"])
            for key, name in self.secret_of_key.items():
                body = body.replace(f"{{secret_sha256:{key}}}", self.secret_sha[name])
            ok, obs = self._answers(self._route(check.path, body), deadline)
            if not ok:
                failed.append(f"{check.path} -> {obs.status or obs.error}")
        if failed:
            return TierResult("functional", TierStatus.FAIL, "; ".join(failed))
        return TierResult("functional", TierStatus.PASS, f"{len(checks)} checks through the route")
