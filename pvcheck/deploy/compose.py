"""The built-in compose driver: deploy the recipe as a stack on the overlay, run its tiers
(install, upgrade, backup/restore when declared), then remove it by this run's label.
"""

from __future__ import annotations

import logging
import time

from pvcheck.composefile import load_stack
from pvcheck.config import Config, RouteConfig
from pvcheck.deploy import DeployOutcome, TierResult, TierStatus
from pvcheck.deploy.attach import AttachmentSampler
from pvcheck.routes import RouteObservation, answered, probe_routes
from pvcheck.stacks import StackDeployer, converged, remove_labelled
from pvcheck.swarm import LABEL_RUN, LABEL_STACK, POLL_S, Swarm

log = logging.getLogger(__name__)


def recipe_stack_name(recipe: str, run_id: str) -> str:
    """A name unique to the run, so a leftover can never be mistaken for a live recipe."""
    return f"pvc-{recipe}-{run_id.rsplit('-', 1)[-1]}"


class ComposeDriver:
    def __init__(self, swarm: Swarm, cfg: Config, run_id: str) -> None:
        assert cfg.deploy is not None and cfg.deploy.compose is not None
        self.swarm, self.cfg, self.run_id = swarm, cfg, run_id
        self.deploy_cfg = cfg.deploy
        self.compose = cfg.deploy.compose
        self.stack = recipe_stack_name(cfg.deploy.recipe, run_id)
        self.deployer = StackDeployer(swarm, {LABEL_RUN: run_id})

    def _route_answers(self, deadline: float) -> tuple[bool, RouteObservation]:
        route: RouteConfig = self.compose.route
        while True:
            (obs,) = probe_routes([route], self.cfg.http)
            ok = answered(route, obs)
            if ok or time.monotonic() >= deadline:
                return ok, obs
            time.sleep(POLL_S)

    def _converged_tier(self, tier: str) -> TierResult:
        timeout = self.deploy_cfg.converge_timeout_s
        deadline = time.monotonic() + timeout
        states = self.deployer.wait_running(self.stack, timeout)
        if not converged(states):
            shown = {name: str(state) for name, state in states.items()}
            return TierResult(tier, TierStatus.FAIL, f"did not converge in {timeout:g}s: {shown}")
        ok, obs = self._route_answers(deadline)
        answer = obs.status if obs.status is not None else obs.error
        detail = f"{', '.join(states)} running; {self.compose.route.url} -> {answer}"
        return TierResult(tier, TierStatus.PASS if ok else TierStatus.FAIL, detail)

    def busy(self) -> list[str]:
        from pvcheck.deploy.drone import running_builds

        return running_builds(self.cfg)

    def run(self) -> DeployOutcome:
        tiers = self.deploy_cfg.tiers
        outcome = DeployOutcome("compose", self.deploy_cfg.recipe, self.stack)
        net = self.cfg.network.name
        # The sampler polls on its own connection while this one deploys.
        sampler_swarm = Swarm.for_target(self.cfg.target)
        with AttachmentSampler(sampler_swarm, net, self.stack) as sampler:
            try:
                log.info("docker stack deploy -c %s %s", self.compose.file, self.stack)
                self.deployer.deploy(self.stack, load_stack(self.compose.file))
                install = self._converged_tier("install")
                outcome.tiers.append(install)
                sampler.sample()  # at least one sample while the app surely runs
                if "upgrade" in tiers:
                    outcome.tiers.append(self._upgrade(install))
                if "backup_restore" in tiers:
                    outcome.tiers.append(self._backup_restore())
                if "functional" in tiers:
                    outcome.tiers.append(
                        TierResult(
                            "functional",
                            TierStatus.UNVERIFIED,
                            "the compose driver runs no functional tests",
                        )
                    )
            finally:
                log.info(
                    "docker stack rm %s  (by labels %s=%s)", self.stack, LABEL_RUN, self.run_id
                )
                left = remove_labelled(
                    self.swarm,
                    f"{LABEL_RUN}={self.run_id}",
                    f"{LABEL_STACK}={self.stack}",
                    timeout_s=self.deploy_cfg.converge_timeout_s,
                )
                outcome.clean_teardown_reported = not any(left.values())
        outcome.stacks = [self.stack]
        outcome.attached = bool(sampler.seen)
        outcome.attach_detail = sampler.describe()
        return outcome

    def _upgrade(self, install: TierResult) -> TierResult:
        if install.status != TierStatus.PASS:
            return TierResult("upgrade", TierStatus.FAIL, "not attempted: install did not pass")
        if self.compose.upgrade_file is None:
            return TierResult(
                "upgrade", TierStatus.FAIL, "no upgrade_file configured for this recipe"
            )
        log.info("docker stack deploy -c %s %s  (upgrade)", self.compose.upgrade_file, self.stack)
        self.deployer.deploy(self.stack, load_stack(self.compose.upgrade_file))
        # Converged = the new spec's tasks run and swarm's update (with its monitor window)
        # completed; a paused or rolled-back update fails the tier.
        tier = self._converged_tier("upgrade")
        detail = (
            f"update completed; {tier.detail}" if tier.status == TierStatus.PASS else tier.detail
        )
        return TierResult("upgrade", tier.status, detail)

    def _backup_restore(self) -> TierResult:
        reason = self.compose.backup_restore
        if reason:
            return TierResult("backup_restore", TierStatus.SKIP, reason, not_applicable=True)
        return TierResult(
            "backup_restore", TierStatus.UNVERIFIED, "the compose driver has no backup step"
        )
