"""Suite-wide settings and reporting.

- hypothesis profile tuned for a loaded 2-core CI machine;
- an integration test is never skipped: a skip is turned into a failure, because a
  skipped integration test would make a green run claim what it did not check;
- the summary says how many integration tests ran against which real broker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Timing-based health checks and deadlines measure the machine, not the code: a
# broker and three services share these two cores during the run.
settings.register_profile(
    "crmsync", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "crmsync"))

# The broker fixtures serve both tests/integration and tests/faults: one session broker;
# the browser fixtures drive Debian's Chromium for the console's page tests.
pytest_plugins = ("tests.support.broker_fixtures", "tests.support.browser")

BROKER_KEY = pytest.StashKey[str]()
POSTGRES_KEY = pytest.StashKey[str]()
# Below the kernel's ephemeral range, like the test brokers' ports.
TEST_POSTGRES_PORT = 19450
INTEGRATION_OUTCOMES = pytest.StashKey[dict[str, int]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[INTEGRATION_OUTCOMES] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if item.get_closest_marker("integration") is None:
        return
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"integration test skipped ({report.longrepr}); they must run"
    if report.when == "call" or report.outcome != "passed":
        counts = item.config.stash[INTEGRATION_OUTCOMES]
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    faults = sys.modules.get("tests.faults.model")
    if faults is not None and faults.REPORTED:
        terminalreporter.write_sep("-", "fault cases: acked / stored / lost / duplicated")
        for line in faults.REPORTED:
            terminalreporter.write_line(line)
    counts = config.stash[INTEGRATION_OUTCOMES]
    if not counts:
        return
    broker = config.stash.get(BROKER_KEY, "no broker started")
    postgres = config.stash.get(POSTGRES_KEY, "no PostgreSQL started")
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    terminalreporter.write_sep(
        "-", f"integration tests: {tally}, skipped 0; broker: {broker}; PostgreSQL: {postgres}"
    )


@pytest.fixture(scope="session")
def postgres_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real PostgreSQL server for the session (CRMSYNC_TEST_POSTGRES_DSN: bring your own)."""
    existing = os.environ.get("CRMSYNC_TEST_POSTGRES_DSN")
    if existing:
        request.config.stash[POSTGRES_KEY] = "an existing server"
        yield existing
        return
    from tests.support.postgres import LocalPostgres, server_version

    server = LocalPostgres(name="test", port=TEST_POSTGRES_PORT, unsafe_fast=True)
    dsn = server.start()
    request.config.stash[POSTGRES_KEY] = f"{server_version(dsn)} started by the suite"
    try:
        yield dsn
    finally:
        server.stop(purge=True)
