"""Tasks: make sure no other run or sweep is active, then drive one real recipe deploy and
check the teardown of the stack it actually used."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pvcheck import deploy
from pvcheck.deploy import adopt
from pvcheck.deploy.drone import DroneClient
from pvcheck.procs import printable
from pvcheck.records import Check, Status
from pvcheck.seams import AdoptedRun, Seams
from pvcheck.tasks.progress import progress_artifacts


@task(name="wait-for-quiet-host", cache_policy=NO_CACHE)
def wait_for_quiet_host(seams: Seams, settings: deploy.Settings) -> Check:
    log = get_run_logger()
    last: list[str] = []

    def waiting(found: list[str]) -> None:
        if found != last:
            wait_s = settings.deploy.active_runs.wait_s
            log.info("waiting (at most %gs) for: %s", wait_s, "; ".join(found))
            last[:] = found

    with progress_artifacts("quiet host"):
        check = deploy.judge_quiet(deploy.gather_quiet(seams, settings, on_wait=waiting))
    if check.status == Status.PASS:
        log.info("host quiet after %.1fs: no active run, harness stack, build or sweep",
                 check.duration_s)  # fmt: skip
    else:
        log.warning("no test traffic: %s", check.detail)
    return check


@task(name="deploy-proof", cache_policy=NO_CACHE)
def deploy_proof(seams: Seams, settings: deploy.Settings) -> tuple[list[Check], list[str]]:
    """The deploy stage's checks, and the stacks the app really used (the review checks
    they stay gone)."""
    log = get_run_logger()
    d = settings.deploy
    log.info("deploy proof: driver %s, recipe %s, network %s", d.driver, d.recipe, settings.network)
    with progress_artifacts("deploy proof"):
        obs = deploy.gather(seams, settings)
    outcome = obs.outcome
    for key, value in outcome.info.items():
        log.info("%s: %s", key, value)
    for tier in outcome.tiers:
        log.info("tier %s: %s %s", tier.tier, tier.status, tier.detail)
    log.info("attachment: %s; stacks used: %s", outcome.attach_detail, outcome.stacks or "none")
    checks = deploy.judge(obs, settings)
    log.info(
        "docker stack ps %s; docker network inspect -v %s -> %s",
        " ".join(outcome.stacks) or "(no stack)",
        settings.network,
        checks[-1].found,
    )
    return checks, outcome.stacks


@task(name="adopt-run", cache_policy=NO_CACHE)
def adopt_run(
    seams: Seams, settings: adopt.Settings, drone: DroneClient | None
) -> tuple[list[Check], AdoptedRun]:
    """M2's deploy proof from a finished harness run: read only, nothing deployed."""
    log = get_run_logger()
    log.info("adopting harness run %s (no deploy is started)", settings.run)
    with progress_artifacts("adopt run"):
        found = adopt.gather(seams, settings, drone)
    read = f"{len(found.data)} bytes" if found.data is not None else found.error
    log.info("%s -> %s", found.where, read)
    if found.build is not None:
        # Drone's answer as it gave it: one printable line, bounded.
        log.info("Drone build %d: %s", found.build.number, printable(str(found.build))[:500])
    log.info("docker network inspect %s: created %s", settings.network, found.network_created)
    checks, adopted = adopt.judge(found, settings)
    for check in checks:  # results.json text in them: one line each, as printable
        log.info("%s: %s (%s) %s", check.id, check.status, printable(check.found),
                 printable(check.detail))  # fmt: skip
    return checks, adopted
