"""What every service runs besides its own work: health, readiness, metrics, signals.

``/healthz`` answers 200 while the process runs and its stream loop, if it has one,
makes progress (503 naming the stalled loop, so that an orchestrator restarts it; with
several workers, also naming a worker that is down or stalled);
``/readyz`` runs the service's
readiness checks (its Kafka and store connections) and answers 503 naming what fails;
``/metrics`` serves Prometheus. SIGTERM and SIGINT set a stop event that the service's
main coroutine waits on, so shutdown runs the service's own clean-stop steps.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.core.config import ConfigError, Settings, load_settings
from services.core.logs import configure_logging
from services.core.metrics import scrape_registry
from services.core.progress import LoopStalled

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
"""Raises (any exception, with a readable message) when the dependency is not usable."""
LivenessCheck = Callable[[], None]
"""Raises LoopStalled (with a readable message) when what it watches no longer moves
on: a stream loop (``Progress.check``), or another worker of the service."""


@dataclass
class HealthEndpoints:
    service: str
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    liveness: dict[str, LivenessCheck] = field(default_factory=dict)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    def add_liveness(self, name: str, check: LivenessCheck) -> None:
        """Something whose stall fails /healthz (and is logged while it lasts)."""
        self.liveness[name] = check

    def install(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", metrics)

    async def healthz(self, _request: web.Request) -> web.Response:
        failures = self.stalled()
        if failures:
            body = {"service": self.service, "status": "stalled", "failures": failures}
            return web.json_response(body, status=503)
        return web.json_response({"service": self.service, "status": "ok"})

    def stalled(self) -> dict[str, str]:
        failures: dict[str, str] = {}
        for name, check in self.liveness.items():
            try:
                check()
            except LoopStalled as exc:
                failures[name] = str(exc)
        return failures

    async def watch(self, interval_s: float = 15.0) -> None:
        """Log a stalled loop every ``interval_s`` (and keep its metric current), whether
        or not anyone asks /healthz."""
        while True:
            for name, why in self.stalled().items():
                log.warning("%s loop stalled: %s", name, why)
            await asyncio.sleep(interval_s)

    async def readyz(self, _request: web.Request) -> web.Response:
        failures = await self.not_ready()
        status = 503 if failures else 200
        body = {"service": self.service, "ready": not failures, "failures": failures}
        return web.json_response(body, status=status)

    async def not_ready(self) -> dict[str, str]:
        """What each failing readiness check says."""
        failures: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), timeout=5)
            except Exception as exc:
                failures[name] = str(exc) or type(exc).__name__
        return failures


async def metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(scrape_registry()))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def start_http(
    app: web.Application, *, host: str, port: int, reuse_port: bool = False
) -> web.AppRunner:
    # shutdown_timeout bounds how long in-flight requests may finish on stop.
    runner = web.AppRunner(app, shutdown_timeout=30, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    log.info("listening host=%s port=%s", host, port)
    return runner


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stop, signum)


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    log.info("stop requested signal=%s", signal.Signals(signum).name)
    stop.set()


def service_settings(service: str) -> Settings:
    """Logging first, then the config; an invalid config ends the process with code 2."""
    configure_logging(service=service)
    try:
        return load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None


def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` on a new event loop; SIGTERM/SIGINT set ``stop``."""

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run(stop)

    asyncio.run(serve())
