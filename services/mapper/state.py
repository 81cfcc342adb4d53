"""The mapper's durable state: one RocksDB per input partition, mirrored to a changelog.

The changelog topic (compacted, one partition per input partition) is the state's
truth; the local RocksDB is its materialised copy, so that millions of records live
on disk rather than in RAM. The life of a write:

1. ``put`` stages the value in memory (reads see it at once) and the engine sends
   it to the changelog inside the same Kafka transaction as the outputs and input
   offsets it belongs with.
2. After the transaction commits, ``commit`` writes the staged values to RocksDB in
   one atomic batch, together with the changelog offset they reach.
3. If the transaction aborts (or the process dies first), the staged values are
   thrown away; the changelog never showed them to a ``read_committed`` reader.

So RocksDB never holds anything the changelog does not, and it can only lag:
``restore`` replays the committed changelog records after the offset RocksDB
reached (all of them when the local copy is gone), and the partition is exact
again. A partition that another instance worked on meanwhile is caught up the same
way.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

# Local bookkeeping, never sent to the changelog.
APPLIED_OFFSET_KEY: Final = b"\xffchangelog-offset"
APPLIED_AT_KEY: Final = b"\xffchangelog-applied-at"
# Memory is bounded per process, not per partition: one block cache shared by every
# partition (recent records stay hot, the rest on disk), and small write buffers.
BLOCK_CACHE_BYTES: Final = 32 * 1024 * 1024
WRITE_BUFFER_BYTES: Final = 8 * 1024 * 1024
_SHARED_CACHE: Cache | None = None


def _options() -> Options:
    global _SHARED_CACHE  # noqa: PLW0603 - one cache for the process, made on first use
    if _SHARED_CACHE is None:
        _SHARED_CACHE = Cache(BLOCK_CACHE_BYTES)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(_SHARED_CACHE)
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return options


class PartitionState:
    """One input partition's state: staged writes over a local RocksDB."""

    def __init__(self, path: Path, *, partition: int) -> None:
        self.partition = partition
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._staged: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self._staged:
            return self._staged[key]
        value = self._db.get(key)
        return value if isinstance(value, bytes) else None

    def put(self, key: bytes, value: bytes | None) -> None:
        """Stage ``value`` for ``key`` (None deletes it)."""
        self._staged[key] = value

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every live key starting with ``prefix``, in key order, staged writes included.

        Lazy: RocksDB is read as the caller goes, so a caller that stops after N keys
        reads about N, however many there are.
        """
        staged = sorted((k, v) for k, v in self._staged.items() if k.startswith(prefix))
        stored = self._stored_items(prefix)
        pending = next(stored, None)
        for key, value in staged:
            while pending is not None and pending[0] < key:
                yield pending
                pending = next(stored, None)
            if pending is not None and pending[0] == key:
                pending = next(stored, None)
            if value is not None:
                yield key, value
        while pending is not None:
            yield pending
            pending = next(stored, None)

    def _stored_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            if isinstance(value, bytes):
                yield key, value

    @property
    def staged(self) -> dict[bytes, bytes | None]:
        return self._staged

    def commit(self, changelog_offset: int) -> None:
        """The staged writes are in the committed changelog up to ``changelog_offset``."""
        self._write(self._staged.items(), changelog_offset)
        self._staged = {}

    def abort(self) -> None:
        self._staged = {}

    def applied_offset(self) -> int:
        """The last changelog offset RocksDB holds (-1: none)."""
        value = self._db.get(APPLIED_OFFSET_KEY)
        return int(value) if isinstance(value, bytes) else -1

    def applied_at(self) -> float | None:
        """When RocksDB last took changelog records (Unix time; None: never)."""
        value = self._db.get(APPLIED_AT_KEY)
        return float(value) if isinstance(value, bytes) else None

    def restore(self, records: list[tuple[bytes, bytes | None]], *, last_offset: int) -> None:
        """Apply committed changelog records read after ``applied_offset()``."""
        self._write(records, last_offset)

    def _write(self, records: Iterable[tuple[bytes, bytes | None]], offset: int) -> None:
        """The records and the changelog offset they reach, in one atomic batch."""
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(APPLIED_OFFSET_KEY, str(offset).encode())
        batch.put(APPLIED_AT_KEY, repr(time.time()).encode())
        self._db.write(batch)

    def close(self) -> None:
        self._staged = {}
        self._db.close()

    @staticmethod
    def wipe(path: Path) -> None:
        """Forget the local copy (the changelog restores it)."""
        shutil.rmtree(path, ignore_errors=True)
