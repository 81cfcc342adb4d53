"""Mapper workers: each its own instance (id, transactional id, data dir), one worker
exactly the instance it always was, and the config's bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import ConfigError, Settings, parse_settings
from services.mapper.engine import (
    DATA_DIR_ENV,
    INSTANCE_ID_ENV,
    EngineSettings,
    default_instance_id,
)
from services.mapper.workers import worker_identities

pytestmark = pytest.mark.unit

CONFIG = """\
kafka:
  bootstrap_servers: 127.0.0.1:9092
  topics: {prefix: "acme.", changes: {partitions: 6}, fullsync: {partitions: 6}}
store: {kind: sqlite}
services:
  mapper:
    data_dir: /srv/mapper
"""


def settings(**mapper: object) -> Settings:
    lines = "".join(f"    {key}: {value}\n" for key, value in mapper.items())
    return parse_settings(CONFIG + lines, file="crmsync.yaml")


def test_one_worker_is_the_instance_it_always_was() -> None:
    config = settings(instance_id="mapper-1")
    [only] = worker_identities(config, {})
    assert (only.instance_id, only.data_dir) == ("mapper-1", Path("/srv/mapper"))
    # Its environment gives the engine exactly what it reads without one.
    assert EngineSettings.from_settings(config, only.environ()) == EngineSettings.from_settings(
        config, {}
    )
    assert EngineSettings.from_settings(config, {}).transactional_id == "acme.mapper-mapper-1"


def test_each_worker_is_its_own_instance() -> None:
    config = settings(instance_id="mapper-1", workers=3)
    identities = worker_identities(config, {})
    assert [(w.instance_id, w.data_dir) for w in identities] == [
        ("mapper-1-w0", Path("/srv/mapper/w0")),
        ("mapper-1-w1", Path("/srv/mapper/w1")),
        ("mapper-1-w2", Path("/srv/mapper/w2")),
    ]
    engines = [EngineSettings.from_settings(config, w.environ()) for w in identities]
    assert [e.transactional_id for e in engines] == [
        "acme.mapper-mapper-1-w0",
        "acme.mapper-mapper-1-w1",
        "acme.mapper-mapper-1-w2",
    ]
    # One group: the workers share the partitions.
    assert {e.group_id for e in engines} == {"acme.mapper"}
    assert [e.data_dir for e in engines] == [w.data_dir for w in identities]


def test_workers_follow_the_instance_named_by_the_environment() -> None:
    config = settings(instance_id="from-config", workers=2)
    environ = {INSTANCE_ID_ENV: "mapper-7", DATA_DIR_ENV: "/data/seven"}
    identities = worker_identities(config, environ)
    assert [(w.instance_id, w.data_dir) for w in identities] == [
        ("mapper-7-w0", Path("/data/seven/w0")),
        ("mapper-7-w1", Path("/data/seven/w1")),
    ]


def test_workers_of_a_derived_instance_id_keep_it_as_their_stem() -> None:
    # The derived id comes from the instance's data dir, not each worker's, so the
    # workers of one instance share one stem.
    config = settings(workers=2)
    stem = default_instance_id(Path("/srv/mapper"))
    assert [w.instance_id for w in worker_identities(config, {})] == [
        f"{stem}-w0",
        f"{stem}-w1",
    ]


def test_workers_default_to_one() -> None:
    assert settings().services.mapper.workers == 1


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ("0", "services.mapper.workers (line 8): Input should be greater than or equal to 1"),
        ("65", "services.mapper.workers (line 8): Input should be less than or equal to 64"),
        (
            "7",
            "services.mapper.workers (line 8): 7 workers but changes has 6 partitions: "
            "a worker without a partition has nothing to do",
        ),
    ],
)
def test_workers_are_bounded(workers: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(workers=workers)
    assert str(caught.value) == f"crmsync.yaml: {expected}"
