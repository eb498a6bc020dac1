"""Which machine each path and command of a config is used on (pure; `pvcheck config check`).

pvcheck may run on the target host itself or on another machine that reaches it over ssh
(cc-ci's orchestrator drives its host as `ssh cc-ci`). A path read on the wrong machine is
missing, or worse another file: this says, per setting, where pvcheck reads, writes or runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvcheck.config import Config

HERE = "here"
HOST = "host"


@dataclass(frozen=True)
class Placed:
    setting: str
    value: str
    machine: str  # HERE: where pvcheck runs; HOST: the target host (the engine's machine)
    use: str


def placement(cfg: Config) -> list[Placed]:
    """Pure: every path and command the config names, with the machine it is used on."""
    out = [
        Placed("target.state_dir", str(cfg.target.state_dir), HERE, "locks, run registry"),
        Placed("docs.dir", str(cfg.docs.dir), HERE, "STATUS, JOURNAL, BACKLOG, REVIEW"),
    ]
    guard = cfg.guard
    if guard is not None:
        out.append(Placed("guard.file", str(guard.file), HERE, "the upgrade procedure read"))
        detect = " ".join(guard.detect_command or []) or "the section's own grep"
        out.append(Placed("guard detection", detect, HOST, "run on sample logs"))
    logs = cfg.logs
    log_what = {
        "journald": f"journalctl -u {logs.unit}",
        "file": str(logs.path),
        "command": " ".join(logs.command or []),
    }[logs.source]
    out.append(Placed(f"logs ({logs.source})", log_what, HOST, "the docker log read"))
    for route in cfg.routes:
        via = route.connect_to or cfg.http.connect_to
        value = f"{route.url}" + (f" via {via}" if via else "")
        machine = HOST if route.check_from == "host" else HERE
        out.append(Placed(f"route {route.name}", value, machine, "probed"))
    if cfg.http.ca_bundle is not None:
        out.append(Placed("http.ca_bundle", str(cfg.http.ca_bundle), HERE, "TLS trust"))
    deploy = cfg.deploy
    if deploy is not None:
        if deploy.command is not None:
            out.append(Placed("deploy.command.argv", " ".join(deploy.command.argv), HOST, "run"))
            out.append(Placed("deploy.command.results", str(deploy.command.results), HOST,
                              "read"))  # fmt: skip
        if deploy.drone is not None:
            out.append(Placed("deploy.drone.url", deploy.drone.url, HERE, "HTTP API"))
            if deploy.drone.results_path:
                out.append(Placed("deploy.drone.results_path", deploy.drone.results_path, HOST,
                                  "read"))  # fmt: skip
        if deploy.adopt is not None:
            out.append(Placed("deploy.adopt.results_path", deploy.adopt.results_path, HOST,
                              "read by --adopt"))  # fmt: skip
        runs = deploy.active_runs
        if runs.folder is not None:
            out.append(Placed("active_runs.folder", str(runs.folder), HOST, "listed"))
        if runs.lock_folder is not None:
            out.append(Placed("active_runs.lock_folder", str(runs.lock_folder), HOST,
                              "flocks probed in /proc/locks"))  # fmt: skip
        out += [Placed("active_runs.markers", str(m), HOST, "looked for") for m in runs.markers]
        out += [Placed("active_runs.sweep_units", u, HOST, "systemctl") for u in runs.sweep_units]
        out += [
            Placed("active_runs.sweep_units_here", u, HERE, "systemctl")
            for u in runs.sweep_units_here
        ]
    if cfg.metrics.textfile is not None:
        out.append(Placed("metrics.textfile", str(cfg.metrics.textfile), HERE, "written"))
    return out


def describe(cfg: Config) -> list[str]:
    """Pure: the placement as lines for people, naming the machines."""
    local = not cfg.target.docker_host.startswith("ssh://")
    names = {
        HERE: "this machine" + (" (the target host)" if local else ""),
        HOST: "this machine (the target host)" if local else f"{cfg.target.docker_host}",
    }
    placed = placement(cfg)
    width = max(len(p.setting) for p in placed)
    return [f"  {p.setting:<{width}}  on {names[p.machine]}: {p.value} ({p.use})" for p in placed]
