"""bench/cpu_split.py: a profile sample goes to the code that was running, and a waiting
thread counts for nobody, so the benchmark's "crmsync's own code" figure is what the
stacks show."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.cpu_split import (
    CRMSYNC,
    LIBRDKAFKA_THREADS,
    SQLITE,
    STDLIB,
    Profile,
    attribute,
    read_samples,
)

ROOT = (
    'process 3468:"python -m services.mapper";thread_run (libpython3.11.so.1.0);'
    "Thread.run (threading.py:982);MapperEngine._transaction (services/mapper/engine.py:347);"
    "MapperEngine._apply (services/mapper/engine.py:442)"
)


@pytest.mark.parametrize(
    ("leaf", "owner"),
    [
        # crmsync's own line, and the interpreter work it causes.
        ("", CRMSYNC),
        (";_changed (services/mapper/rules/record.py:285);Py_DECREF (object.h:537)", CRMSYNC),
        (";dict_merge (libpython3.11.so.1.0);0x7f36d6aa4193 (libc.so.6)", CRMSYNC),
        # Language modules are the caller's: a NamedTuple built or a dataclass replaced.
        (";namedtuple.<locals>._make (collections/__init__.py:444)", CRMSYNC),
        (";replace (dataclasses.py:1501);__init__ (<string>:3)", CRMSYNC),
        # A library's compiled code, and the interpreter work it causes.
        (
            ";Converter.encode (services/core/serde.py:129);schemaless_writer (_write.c:24813)"
            ";_write_write_record (_write.c:24309);PyLong_AsLong (libpython3.11.so.1.0)",
            "fastavro",
        ),
        (
            ";Producer_produce (confluent_kafka/cimpl.cpython-311-x86_64-linux-gnu.so)",
            "confluent-kafka",
        ),
        (";rd_kafka_producev (librdkafka-0cb94173.so.1);memcpy (libc.so.6)", "librdkafka"),
        (
            ";get (rocksdict/rocksdict.cpython-311-x86_64-linux-gnu.so);"
            "rocksdb::SkipListRep::Iterator::Seek"
            " (rocksdict/rocksdict.cpython-311-x86_64-linux-gnu.so)",
            "rocksdict (RocksDB)",
        ),
        # A library's Python, and the standard library's.
        (";Pool.getconn (psycopg_pool/pool.py:180)", "psycopg / libpq"),
        (";JSONDecoder.raw_decode (json/decoder.py:353)", STDLIB),
        (";task_step (_asynciomodule.c:3200)", STDLIB),
        # The SQLite store's library runs inside the writer.
        (
            ";SqliteStore.apply (services/writer/stores/sqlite.py:90);pysqlite_cursor_execute"
            " (cursor.c:900);sqlite3VdbeExec (libsqlite3.so.0.8.6)",
            SQLITE,
        ),
        # datetime is how code holds a time: the caller's, like the interpreter's work.
        (
            ";version_of (services/core/versions.py:20);new_datetime_ex2 (_datetimemodule.c:1)",
            CRMSYNC,
        ),
    ],
)
def test_a_sample_goes_to_the_innermost_frame_that_has_an_owner(leaf: str, owner: str) -> None:
    assert attribute(ROOT + leaf) == owner


@pytest.mark.parametrize(
    "leaf",
    [
        # Waiting for the GIL inside crmsync's code is not crmsync's CPU.
        ";ProfileUpdate.key (services/core/contracts.py:185);pthread_cond_wait (libc.so.6)"
        ";0x7f36d6aa3f16 (libc.so.6)",
        ";Consumer_consume (confluent_kafka/cimpl.cpython-311-x86_64-linux-gnu.so)"
        ";cnd_timedwait (librdkafka-0cb94173.so.1);pthread_cond_timedwait (libc.so.6)"
        ";0x7f36d6aa3f16 (libc.so.6)",
        ";EpollSelector.select (selectors.py:468);epoll_wait (libc.so.6)",
    ],
)
def test_a_waiting_thread_counts_for_nobody(leaf: str) -> None:
    assert attribute(ROOT + leaf) is None


def test_samples_are_read_from_py_spy_raw_output(tmp_path: Path) -> None:
    raw = tmp_path / "mapper.txt"
    raw.write_text(
        f"{ROOT} 7\n"
        f"{ROOT};schemaless_reader (_read.c:100) 3\n"
        f"{ROOT};pthread_cond_wait (libc.so.6) 50\n"
        "not a sample line\n"
    )
    assert read_samples(raw) == Counter({CRMSYNC: 7, "fastavro": 3})
    assert read_samples(tmp_path / "absent.txt") == Counter()


def test_shares_split_the_python_threads_time_by_samples_and_keep_librdkafkas_threads() -> None:
    profile = Profile(
        name="mapper",
        before={LIBRDKAFKA_THREADS: 100, "python threads": 1000},
        after={LIBRDKAFKA_THREADS: 120, "python threads": 1080},
        samples=Counter({CRMSYNC: 3, "fastavro": 1}),
    )
    shares = profile.shares()
    assert shares == pytest.approx({LIBRDKAFKA_THREADS: 0.2, CRMSYNC: 0.6, "fastavro": 0.2})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_an_idle_window_has_no_shares() -> None:
    ticks = {LIBRDKAFKA_THREADS: 5, "python threads": 5}
    assert Profile("writer", ticks, ticks, Counter({CRMSYNC: 1})).shares() == {}
