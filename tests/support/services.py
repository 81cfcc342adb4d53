"""Real service processes for integration tests, each with its own config and ports.

Every test stack gets a unique topic prefix (so its own topics and consumer groups),
its own SQLite file and free ports, and runs the three services exactly as
production does: as separate processes talking only through the real broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SERVICES: Final = ("ingest", "mapper", "writer")
"""What a stack starts unless told otherwise."""
ALL_SERVICES: Final = (*SERVICES, "outbound", "console")
# Every process a test started, so the session can kill what a failed or timed-out
# test left behind.
STARTED: Final[list[subprocess.Popen[bytes]]] = []
DEMO_TOKEN: Final = "test-token-5f2c"
ADMIN_TOKEN: Final = "admin-token-9d1e"
READ_TOKEN: Final = "read-token-4c2a"
# Secrets the test stacks' configs name; the values travel as environment variables.
SECRETS_ENV: Final = {
    "CRMSYNC_DEMO_TOKEN": DEMO_TOKEN,
    "CRMSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
    "CRMSYNC_READ_TOKEN": READ_TOKEN,
    "CRMSYNC_REST_TOKEN": "rest-token-1",
}


# Ports for the services a test starts: below the kernel's ephemeral range
# (32768-60999), where a port the kernel handed out (bind to 0) can be taken by some
# client connection's source port before the service binds it.
SERVICE_PORTS: Final = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never handed out before in this run."""
    for _ in range(1000):
        port = random.choice(SERVICE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {SERVICE_PORTS}")


def child_pids(pid: int) -> set[int]:
    """The processes ``pid`` started (a service's extra workers)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(child) for child in found.stdout.split()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stack_config(
    *, bootstrap: str, prefix: str, workdir: Path, ports: dict[str, int], partitions: int = 3
) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": {
                "prefix": prefix,
                "changes": {"partitions": partitions},
                "fullsync": {"partitions": partitions},
                "profile_updates": {"partitions": partitions},
            },
        },
        "store": {"kind": "sqlite", "path": str(workdir / "profiles.db")},
        "services": {
            "ingest": {
                "http": {"port": ports["ingest"]},
                "admin": {"port": ports["admin"]},
                "delivery_timeout_ms": 5000,
                "admin_token": {"env": "CRMSYNC_ADMIN_TOKEN"},
            },
            "mapper": {"http": {"port": ports["mapper"]}, "data_dir": str(workdir / "mapper")},
            "writer": {"http": {"port": ports["writer"]}, "batch_max_wait_ms": 50},
            "outbound": {"http": {"port": ports["outbound"]}, "batch_max_wait_ms": 50},
            "console": {
                "http": {"port": ports["console"]},
                "data_dir": str(workdir / "console"),
                "read_token": {"env": "CRMSYNC_READ_TOKEN"},
            },
        },
        "sources": {
            "demo": {
                "kind": "generic_webhook",
                "auth": {"kind": "bearer", "token": {"env": "CRMSYNC_DEMO_TOKEN"}},
                "mapping": {"email": "email", "first_name": "first_name", "seq": "seq"},
            }
        },
    }


@dataclass
class ServiceProcess:
    name: str
    config_path: Path
    log_path: Path
    port: int
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the next start (e.g. a crash point)."""

    def start(self) -> None:
        env = {
            **os.environ,
            **SECRETS_ENV,
            "CRMSYNC_CONFIG": str(self.config_path),
            "CRMSYNC_LOG_FORMAT": "text",
            **self.env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        STARTED.append(self.process)
        log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            status, _ = http_get(f"{self.url}/readyz")
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s:\n{self.log_tail()}")

    def admin(self, method: str, path: str) -> tuple[int, Any]:
        """A call to ingest's admin API with the admin token."""
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        request = urllib.request.Request(url, method=method)
        request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"{self.name} ignored SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    """The services on one config; ``workdir`` holds config, logs and the store. Ingest,
    mapper and writer start by default, the outbound service when named."""

    bootstrap: str
    workdir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    sources: dict[str, Any] = field(default_factory=dict)
    """More sources besides the demo webhook, as config dicts."""
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in (*ALL_SERVICES, "admin")}
        self.config = stack_config(
            bootstrap=self.bootstrap, prefix=self.prefix, workdir=self.workdir, ports=ports
        )
        self.config["sources"].update(self.sources)
        self.config_path = self.workdir / "crmsync.yaml"
        self.write_config()
        for name in ALL_SERVICES:
            self.services[name] = ServiceProcess(
                name=name,
                config_path=self.config_path,
                log_path=self.workdir / f"{name}.log",
                port=ports[name],
                admin_port=ports["admin"],
            )

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    @property
    def db_path(self) -> Path:
        return Path(self.config["store"]["path"])

    def topic(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            self.services[name].start()
        for name in names or SERVICES:
            self.services[name].wait_ready()

    def stop(self) -> None:
        for name in reversed(ALL_SERVICES):
            # A service that ignored SIGTERM was killed; the test reports that itself.
            with contextlib.suppress(RuntimeError):
                self.services[name].stop()

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``crmsync ARGS`` on this stack's config, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, **SECRETS_ENV},
            check=False,
        )


def kill_leftovers() -> None:
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    STARTED.clear()


def held_changes(stack: Stack) -> float:
    """Real-time changes the stack's mapper holds behind full syncs (its metric)."""
    _status, body = http_get(f"{stack['mapper'].url}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("crmsync_mapper_held_changes{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
