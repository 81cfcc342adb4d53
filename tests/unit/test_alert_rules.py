"""The Prometheus alert rules and config under deploy/prometheus, checked by promtool.

`promtool test rules` runs alerts_test.yml: every alert fires on the series that should
fire it, with its labels and summary, and stays quiet on those that should not. The
other checks make sure no alert is left without such tests. promtool reads local
files only (no scrape, no DNS), so this needs nothing running; the first run may
install Debian's prometheus package for it (tests/support/promtool.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.promtool import RULES_DIR, run_promtool

# The first run may wait for apt-get (the dpkg lock, the download) before promtool runs.
pytestmark = [pytest.mark.unit, pytest.mark.timeout(900)]

ALERTS = "alerts.yml"
ALERT_TESTS = "alerts_test.yml"
CONFIG = "prometheus.yml"


def _promtool_passes(*args: str) -> None:
    result = run_promtool(*args)
    if result.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


def _load(name: str) -> Any:
    return yaml.safe_load((RULES_DIR / name).read_text(encoding="utf-8"))


def _alert_names() -> list[str]:
    return [
        rule["alert"]
        for group in _load(ALERTS)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_the_alert_rules_are_valid() -> None:
    _promtool_passes("check", "rules", ALERTS)


def test_every_alert_fires_and_stays_quiet_as_its_tests_expect() -> None:
    _promtool_passes("test", "rules", ALERT_TESTS)


def test_the_prometheus_config_and_the_rules_it_loads_are_valid() -> None:
    _promtool_passes("check", "config", CONFIG)


def test_the_tests_load_the_alert_rules() -> None:
    assert _load(ALERT_TESTS)["rule_files"] == [ALERTS]
    assert _load(CONFIG)["rule_files"] == [ALERTS]


@pytest.mark.parametrize("alert", _alert_names())
def test_every_alert_is_tested_firing_and_quiet(alert: str) -> None:
    cases = [
        case
        for test in _load(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"{ALERT_TESTS} never expects {alert} to fire"
    assert quiet, f"{ALERT_TESTS} never expects {alert} to stay quiet"
    for case in firing:
        for expected in case["exp_alerts"]:
            assert "severity" in expected.get("exp_labels", {}), f"{alert}: labels unchecked"
            assert "summary" in expected.get("exp_annotations", {}), f"{alert}: summary unchecked"
