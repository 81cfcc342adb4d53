"""The console's health lights: each rule, and the order in which they are checked."""

from __future__ import annotations

import pytest

from services.console.health import (
    DestinationFacts,
    Light,
    SourceFacts,
    destination_health,
    source_health,
)

pytestmark = pytest.mark.unit

T = "2026-12-03T10:00:00+00:00"


@pytest.mark.parametrize(
    ("facts", "light", "rule"),
    [
        (SourceFacts(), Light.INACTIVE, "nothing received yet"),
        (SourceFacts(last_received_at=T), Light.HEALTHY, "last change at 2026-12-03 10:00:00 UTC"),
        (SourceFacts(paused_since=T, ingest_error=None), Light.INACTIVE, "paused since"),
        (SourceFacts(ingest_error="refused"), Light.ERROR, "ingest's admin API not answering"),
        (
            SourceFacts(poll={"consecutive_failures": 3, "last_error": "HTTP 500"}),
            Light.ERROR,
            "3 polls in a row failed: HTTP 500",
        ),
        (
            SourceFacts(poll={"consecutive_failures": 4, "last_error": "HTTP 401 Unauthorized"}),
            Light.ERROR,
            "authentication failing",
        ),
        (
            SourceFacts(poll={"consecutive_failures": 1, "last_error": "timeout"}),
            Light.WARNING,
            "the last poll failed: timeout",
        ),
        (
            SourceFacts(fullsync={"status": "FAILED", "reason": "CRM down"}),
            Light.ERROR,
            "the last full sync failed: CRM down",
        ),
        (
            SourceFacts(received_last_hour=10, rejected_last_hour=6),
            Light.ERROR,
            "6 of 10 changes rejected",
        ),
        (
            SourceFacts(received_last_hour=100, rejected_last_hour=6, last_received_at=T),
            Light.WARNING,
            "6 of 100 changes rejected",
        ),
        (
            SourceFacts(received_last_hour=1000, rejected_last_hour=6, last_received_at=T),
            Light.HEALTHY,
            "last change at",
        ),
        (
            SourceFacts(older_profiles=12, mapping_version=3, last_received_at=T),
            Light.WARNING,
            "a full sync is due: 12 profiles",
        ),
    ],
)
def test_a_source_light_and_the_rule_that_set_it(
    facts: SourceFacts, light: Light, rule: str
) -> None:
    health = source_health(facts)
    assert health.light is light
    assert rule in health.rule


def test_a_pause_outranks_failing_polls_and_an_outage_of_ingest_outranks_all() -> None:
    failing = {"consecutive_failures": 5, "last_error": "HTTP 500"}
    assert source_health(SourceFacts(paused_since=T, poll=failing)).light is Light.INACTIVE
    assert source_health(SourceFacts(paused_since=T, ingest_error="x")).light is Light.ERROR


def test_only_an_authentication_error_is_flagged_as_one() -> None:
    auth = source_health(SourceFacts(poll={"consecutive_failures": 3, "last_error": "HTTP 403"}))
    other = source_health(SourceFacts(poll={"consecutive_failures": 3, "last_error": "HTTP 503"}))
    assert auth.auth
    assert not other.auth


@pytest.mark.parametrize(
    ("facts", "light", "rule"),
    [
        (DestinationFacts(paused=True), Light.INACTIVE, "paused in the config"),
        (DestinationFacts(waiting=0), Light.HEALTHY, "nothing waiting"),
        (DestinationFacts(waiting=5), Light.HEALTHY, "5 changes waiting"),
        (DestinationFacts(waiting=20_000), Light.WARNING, "20000 changes waiting"),
        (DestinationFacts(dead_letters_last_hour=2), Light.WARNING, "2 changes dead-lettered"),
        (DestinationFacts(dead_letters_last_hour=10), Light.ERROR, "10 changes dead-lettered"),
        (DestinationFacts(kafka_error="down"), Light.WARNING, "backlog unknown: down"),
    ],
)
def test_a_destination_light_and_the_rule_that_set_it(
    facts: DestinationFacts, light: Light, rule: str
) -> None:
    health = destination_health(facts)
    assert health.light is light
    assert rule in health.rule
