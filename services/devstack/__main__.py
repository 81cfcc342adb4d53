"""``python -m services.devstack up|down|status``: the local stack in the background.

``up`` starts the demo's fakes (``--fake hubspot=8090``: the test fakes, serving
their vendor's API on loopback) and then ingest, mapper, writer, outbound and console on the
given config, all as detached processes (pid files and logs under ``var/``), waits until
each answers, and returns. ``down`` sends SIGTERM to everything it started, waits
for the clean stop, and only then resorts to SIGKILL. A pid is signalled only if its
command line is still the process started, so a recycled pid is never touched.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from services.core.config import ConfigError, Settings, load_settings
from services.core.http import TRANSIENT, client

SERVICES: Final = ("ingest", "mapper", "writer", "outbound", "console")
READY_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 40.0


@dataclass(frozen=True)
class Process:
    """One background process of the stack: its name, module and readiness URL."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    ready_url: str | None = None

    def pid_file(self, var: Path) -> Path:
        return var / "run" / f"{self.name}.pid"

    def log_file(self, var: Path) -> Path:
        return var / "log" / f"{self.name}.log"

    def running_pid(self, var: Path) -> int | None:
        try:
            pid = int(self.pid_file(var).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if self.module.encode() in cmdline else None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.devstack")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--config", help="the services' config (needed by up and status)")
    parser.add_argument("--var-dir", default="var")
    parser.add_argument(
        "--fake",
        action="append",
        default=[],
        metavar="CRM=PORT",
        help="also run a fake CRM for the demo, e.g. hubspot=8090,change-every=5",
    )
    args = parser.parse_args()
    var = Path(args.var_dir)
    if args.command == "down":
        raise SystemExit(down(var))
    if args.config is None:
        parser.error(f"{args.command} needs --config")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    stack = [*fakes(args.fake), *services(settings)]
    if args.command == "up":
        raise SystemExit(up(stack, config=Path(args.config), var=var))
    raise SystemExit(status(stack, var))


def fakes(specs: list[str]) -> list[Process]:
    found = []
    for spec in specs:
        # NAME=PORT[,OPTION=VALUE...]: the options pass to the fake as --OPTION VALUE.
        crm, _, rest = spec.partition("=")
        port, *options = rest.split(",")
        extra = [
            part for o in options for part in (f"--{o.partition('=')[0]}", o.partition("=")[2])
        ]
        found.append(
            Process(
                name=f"fake-{crm}",
                module=f"tests.fakes.{crm}",
                args=("--port", port, *extra),
                ready_url=f"http://127.0.0.1:{port}/",
            )
        )
    return found


def services(settings: Settings) -> list[Process]:
    return [
        Process(
            name=name,
            module=f"services.{name}",
            ready_url=f"http://127.0.0.1:{getattr(settings.services, name).http.port}/readyz",
        )
        for name in SERVICES
    ]


def _answers(url: str, *, ready: bool) -> bool:
    """For /readyz, a 200; for a fake, any HTTP answer at all."""
    try:
        with client(timeout_s=2) as http:
            status = http.get(url).status_code
    except TRANSIENT:
        return False
    return status == 200 if ready else True


def up(stack: list[Process], *, config: Path, var: Path) -> int:
    (var / "run").mkdir(parents=True, exist_ok=True)
    (var / "log").mkdir(parents=True, exist_ok=True)
    # CRMSYNC_DEVSTACK: a local stack, where host-derived instance ids are fine.
    env = {**os.environ, "CRMSYNC_CONFIG": str(config.resolve()), "CRMSYNC_DEVSTACK": "1"}
    for process in stack:
        if process.running_pid(var) is not None:
            print(f"{process.name}: already running")
            continue
        with process.log_file(var).open("ab") as log:
            started = subprocess.Popen(
                [sys.executable, "-m", process.module, *process.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process.pid_file(var).write_text(f"{started.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    for process in stack:
        url = process.ready_url
        while url is not None and not _answers(url, ready=url.endswith("/readyz")):
            if process.running_pid(var) is None:
                print(f"{process.name}: exited; see {process.log_file(var)}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"{process.name}: not ready after {READY_TIMEOUT_S:.0f}s", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"{process.name}: ready on {url.rsplit('/', 1)[0] if url else '-'}")
    return 0


def down(var: Path) -> int:
    """Stop everything with a pid file under ``var/run``, services before fakes."""
    run = var / "run"
    names = sorted(p.stem for p in run.glob("*.pid")) if run.is_dir() else []
    processes = [
        Process(name=n, module=f"tests.fakes.{n[5:]}" if n.startswith("fake-") else f"services.{n}")
        for n in sorted(names, key=lambda n: n.startswith("fake-"))
    ]
    pids = {p: pid for p in processes if (pid := p.running_pid(var)) is not None}
    for process, pid in pids.items():
        os.kill(pid, signal.SIGTERM)
        print(f"{process.name}: stopping (pid {pid})")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        while process.running_pid(var) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = process.running_pid(var)
        if pid is not None:
            print(f"{process.name}: did not stop in time, killing", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        process.pid_file(var).unlink(missing_ok=True)
    return 0


def status(stack: list[Process], var: Path) -> int:
    healthy = True
    for process in stack:
        pid = process.running_pid(var)
        url = process.ready_url
        ready = pid is not None and (url is None or _answers(url, ready=url.endswith("/readyz")))
        healthy &= ready
        state = "ready" if ready else "running, not ready" if pid else "stopped"
        print(f"{process.name}: {state}")
    return 0 if healthy else 3


if __name__ == "__main__":
    main()
