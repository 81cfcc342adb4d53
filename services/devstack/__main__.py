"""``python -m services.devstack up|down|status``: the services in the background.

``up`` starts ingest, mapper and writer on the given config as detached processes
(pid files and logs under ``var/``), waits until each answers /readyz, and returns.
``down`` sends SIGTERM, waits for the clean stop, and only then resorts to SIGKILL.
A pid is signalled only if its command line is still that crmsync service, so a
recycled pid is never touched.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

from services.core.config import ConfigError, Settings, load_settings

SERVICES: Final = ("ingest", "mapper", "writer")
READY_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 40.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.devstack")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--config", help="the services' config (needed by up and status)")
    parser.add_argument("--var-dir", default="var")
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
    if args.command == "up":
        raise SystemExit(up(settings, config=Path(args.config), var=var))
    raise SystemExit(status(settings, var))


def _pid_file(var: Path, service: str) -> Path:
    return var / "run" / f"{service}.pid"


def _running_pid(var: Path, service: str) -> int | None:
    try:
        pid = int(_pid_file(var, service).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"services.{service}".encode() in cmdline else None


def _port(settings: Settings, service: str) -> int:
    return int(getattr(settings.services, service).http.port)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def up(settings: Settings, *, config: Path, var: Path) -> int:
    (var / "run").mkdir(parents=True, exist_ok=True)
    (var / "log").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CRMSYNC_CONFIG": str(config.resolve())}
    for service in SERVICES:
        if _running_pid(var, service) is not None:
            print(f"{service}: already running")
            continue
        with (var / "log" / f"{service}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _pid_file(var, service).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + READY_TIMEOUT_S
    for service in SERVICES:
        while not _ready(_port(settings, service)):
            if _running_pid(var, service) is None:
                print(f"{service}: exited; see {var / 'log' / f'{service}.log'}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"{service}: not ready after {READY_TIMEOUT_S:.0f}s", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"{service}: ready on http://127.0.0.1:{_port(settings, service)}")
    return 0


def down(var: Path) -> int:
    pids = {s: pid for s in SERVICES if (pid := _running_pid(var, s)) is not None}
    for service, pid in pids.items():
        os.kill(pid, signal.SIGTERM)
        print(f"{service}: stopping (pid {pid})")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for service in pids:
        while _running_pid(var, service) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = _running_pid(var, service)
        if pid is not None:
            print(f"{service}: did not stop in time, killing", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        _pid_file(var, service).unlink(missing_ok=True)
    return 0


def status(settings: Settings, var: Path) -> int:
    healthy = True
    for service in SERVICES:
        pid = _running_pid(var, service)
        ready = pid is not None and _ready(_port(settings, service))
        healthy &= ready
        state = "ready" if ready else "running, not ready" if pid else "stopped"
        print(f"{service}: {state}")
    return 0 if healthy else 3


if __name__ == "__main__":
    main()
