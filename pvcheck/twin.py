"""The host-side pieces of a lab that twins a real host (`pvcheck lab up --profile cc-ci`):
the lab's own CA and the certificate Traefik serves, the recipe harness's command line, and
the Drone API stand-in process that runs that harness for each build.

Everything lives under the lab's state_dir: ca.pem (what configs name as their CA bundle),
tls/ (Traefik's certificate, key and file-provider config), drone-token (0600), the stand-in's
pid file, log and build folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pvcheck.api import listener_is_ours
from pvcheck.config import Config, LabConfig
from pvcheck.errors import LabError, StateFileError
from pvcheck.machine import machine_of
from pvcheck.resources import LAB
from pvcheck.safeio import atomic_write, read_capped

log = logging.getLogger(__name__)

CERT_DAYS = 90
RENEW_DAYS = 14
DRONE_API = LAB / "cc-ci-twin" / "drone_api.py"


def ca_path(lab: LabConfig) -> Path:
    return lab.state_dir / "ca.pem"


def token_path(lab: LabConfig) -> Path:
    return lab.state_dir / "drone-token"


def _write(path: Path, data: bytes, mode: int) -> None:
    atomic_write(path, data.decode("ascii"), new_mode=mode)  # PEM, YAML, hex: all ASCII


def _valid_until(cert_file: Path) -> dt.datetime | None:
    try:
        cert = x509.load_pem_x509_certificate(read_capped(cert_file, 64 * 1024) or b"")
    except (OSError, ValueError, StateFileError):
        return None
    return cert.not_valid_after_utc


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def ensure_tls(lab: LabConfig) -> Path:
    """The lab CA and a server certificate for lab.tls_domains, made once and renewed before
    they expire; returns the CA bundle's path."""
    tls = lab.state_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True, mode=0o755)
    cert_file, key_file, ca_file = tls / "cert.pem", tls / "key.pem", ca_path(lab)
    now = dt.datetime.now(dt.UTC)
    until = _valid_until(cert_file)
    marker = tls / "domains"
    wanted = "\n".join(lab.tls_domains)
    fresh = (
        until is not None
        and until - now > dt.timedelta(days=RENEW_DAYS)
        and ca_file.exists()
        and read_capped(marker, 64 * 1024) == wanted.encode()
    )
    if fresh:
        return ca_file
    log.info("lab CA: new certificate for %s", ", ".join(lab.tls_domains))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("pvcheck lab CA"))
        .issuer_name(_name("pvcheck lab CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(d) for d in lab.tls_domains]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(lab.tls_domains[0] if lab.tls_domains else "lab"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(
        key_file,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write(cert_file, cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o644)
    _write(ca_file, ca_cert.public_bytes(pem), 0o644)
    dynamic = (
        "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
        "        certFile: /etc/traefik/tls/cert.pem\n        keyFile: /etc/traefik/tls/key.pem\n"
    )
    _write(tls / "dynamic.yml", dynamic.encode(), 0o644)
    _write(marker, wanted.encode(), 0o644)
    return ca_file


def harness_argv(cfg: Config, results: str) -> list[str]:
    """The harness command line as the host runs it for a recipe (`{recipe}` is replaced by
    the caller: the Drone stand-in or pvcheck's command driver)."""
    lab = cfg.lab
    if lab is None or lab.harness is None:
        raise LabError(f"{cfg.source}: lab.harness is not set")
    argv = [sys.executable, str(lab.harness), "{recipe}", "--results", results]
    if cfg.deploy is not None and cfg.deploy.active_runs.lock_folder is not None:
        argv += ["--lock-dir", str(cfg.deploy.active_runs.lock_folder)]
    if lab.tls_port is not None:
        argv += ["--https", f"127.0.0.1:{lab.tls_port}", "--cacert", str(ca_path(lab))]
    return argv


def _uids(pid: int) -> set[int]:
    """The real, effective, saved and file-system uids of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(uid) for uid in line.split()[1:]}
    return set()


def _alive(pid_file: Path, argv: list[str] | None = None) -> int | None:
    """The stand-in's pid when it runs (with exactly `argv`, when given: one started from
    another checkout would run that checkout's harness)."""
    try:
        pid = int((read_capped(pid_file, 64) or b"").strip())
        os.kill(pid, 0)
        if _uids(pid) != {os.geteuid()}:
            return None  # anyone can start a process with the same command line
    except (OSError, ValueError, StateFileError):
        return None
    with contextlib.suppress(OSError):
        running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        if argv is not None:
            return pid if running == [a.encode() for a in argv] else None
        if any(DRONE_API.name.encode() in part for part in running):
            return pid
    return None  # a recycled pid: not ours


def _healthy(url: str) -> bool:
    try:
        return (
            httpx.get(f"{url.rstrip('/')}/healthz", timeout=2, trust_env=False).status_code == 200
        )
    except httpx.HTTPError:
        return False


def ensure_drone_api(cfg: Config, wait_s: float = 20.0) -> None:
    """Serve the Drone API stand-in at deploy.drone.url (on a lab machine, at its address and
    on it; else on 127.0.0.1 only), idempotently."""
    lab, deploy = cfg.lab, cfg.deploy
    if lab is None or not lab.drone_api or deploy is None or deploy.drone is None:
        return
    url = httpx.URL(deploy.drone.url)
    machine = machine_of(lab)
    # On a lab machine the stand-in runs there (as Drone runs on cc-ci), on its address.
    listen = machine.spec.address if machine else "127.0.0.1"
    if url.host != listen or url.port is None:
        raise LabError(f"{cfg.source}: deploy.drone.url must be http://{listen}:PORT/ in this lab")
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    token = token_path(lab)
    if not token.exists():
        _write(token, secrets.token_hex(20).encode(), 0o600)
    pid_file = lab.state_dir / "drone-api.pid"
    argv = [
        sys.executable, str(DRONE_API), "--listen", listen, "--port", str(url.port),
        "--token-file", str(token), "--repo", deploy.drone.repo,
        "--workdir", str(lab.state_dir / "builds"),
        # On a machine, where results_path says (its own folder); here, under the state folder.
        "--runs-dir", str(_runs_dir(cfg) if machine else lab.state_dir / "builds" / "runs"),
        "--recipe-param", deploy.drone.recipe_param, "--",
        *harness_argv(cfg, "{results}"),
    ]  # fmt: skip
    # Reused only when the listener on the port is that process's own: one that answers
    # /healthz is not enough (anyone may bind a port the stand-in left, and would then get
    # the builds and the token).
    running = _alive(pid_file, argv)
    if running and listener_is_ours(url.port, running) and _healthy(deploy.drone.url):
        return
    stop_drone_api(lab)
    log.info("starting the Drone API stand-in on %s", deploy.drone.url)
    log_path = lab.state_dir / "drone-api.log"
    log_fd = os.open(
        log_path,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
        0o640,
    )
    with os.fdopen(log_fd, "ab") as out:
        proc = subprocess.Popen(
            machine.enter(argv) if machine else argv,  # nsenter execs: the pid is the stand-in's
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _write(pid_file, str(proc.pid).encode(), 0o644)
    deadline = time.monotonic() + wait_s
    while not _healthy(deploy.drone.url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the Drone API stand-in did not start; see {log_path}")
        time.sleep(0.2)
    if not listener_is_ours(url.port, proc.pid):
        stop_drone_api(lab)
        raise LabError(
            f"{deploy.drone.url} answers, but not from the Drone API stand-in pvcheck started "
            "(another process holds the port); nothing is sent to it"
        )


def _runs_dir(cfg: Config) -> Path:
    """The folder of per-build run folders that deploy.drone.results_path names
    (`<runs dir>/{build}/results.json`), where the stand-in's harness writes."""
    assert cfg.deploy is not None and cfg.deploy.drone is not None and cfg.lab is not None
    pattern = cfg.deploy.drone.results_path
    if pattern is None:
        return cfg.lab.state_dir / "builds" / "runs"
    folder, _, rest = pattern.partition("/{build}/")
    if rest != "results.json" or "{" in folder:
        raise LabError(
            f"{cfg.source}: deploy.drone.results_path must be DIR/{{build}}/results.json here"
        )
    return Path(folder)


def stop_drone_api(lab: LabConfig) -> None:
    pid = _alive(lab.state_dir / "drone-api.pid")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    (lab.state_dir / "drone-api.pid").unlink(missing_ok=True)
