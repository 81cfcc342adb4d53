"""Whose code a service's CPU goes to: crmsync's own, or that of the libraries it runs on.

``python -m bench.e2e_compare --profile`` uses this during each measured crmsync load:

- **Threads.** Every thread's CPU time is read from ``/proc/<pid>/task`` before and
  after the load. librdkafka runs its protocol work on threads of its own (named
  ``rdk:...``), which a Python profiler never sees: their time is the library's.
- **Stacks.** py-spy samples the Python threads with their native frames
  (``--native``), so a stack shows which C extension is running. Each sample goes to
  the innermost frame that belongs to someone: a crmsync module (``services/``), a
  library's Python module, or a library's compiled code (fastavro, confluent-kafka,
  msgspec, psycopg, aiohttp and the rest, recognised by their C sources). Frames of
  the interpreter itself (the eval loop, dicts, strings, libc) belong to whoever
  called them: a dict built in crmsync's code is crmsync's time.
- **Shares.** A service's CPU is split into librdkafka's threads and its Python
  threads' time, the latter by the owners of their samples. The benchmark profiles a
  second load of the same shape right after the measured one, so the measured figures
  are not slowed by sampling, and applies the shares to them.

Attributing the interpreter's frames to the calling module counts against crmsync any
interpreter work a library's Python wrapper causes from crmsync's frame, so crmsync's
figure is an upper bound of its own code's cost and the libraries' a lower bound.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CRMSYNC: Final = "crmsync"
STDLIB: Final = "Python stdlib (json, asyncio, hmac, ...)"
LIBRDKAFKA_THREADS: Final = "librdkafka (its own threads)"
SQLITE: Final = "SQLite (the SQLite store)"
SAMPLE_RATE: Final = 200

# Compiled sources of the libraries crmsync runs on, as py-spy names native frames.
# Anything native not listed here is the interpreter's or libc's, and its time goes
# to the Python-level caller.
NATIVE_LIBRARIES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (
        re.compile(r"^_(read|write|schema|logical_readers|logical_writers|validation)\.c$"),
        "fastavro",
    ),
    (re.compile(r"^rd.*\.c$|^snappy|^crc32c|^lz4|^zstd"), "librdkafka"),
    (
        re.compile(r"^confluent_kafka\.c$|^Producer\.c$|^Consumer\.c$|^Admin\.c$|^Metadata\.c$"),
        "confluent-kafka",
    ),
    (re.compile(r"^_core\.c$|^(ryu|atof|common)\.h$"), "msgspec"),
    (re.compile(r"^_psycopg\.c$|^pq\.c$|^fe-|^libpq"), "psycopg / libpq"),
    (re.compile(r"^_http_(parser|writer)\.c$|^llhttp|^_websocket|^_helpers\.c$"), "aiohttp"),
    (re.compile(r"^_multidict\.c$|^_quoting_c\.c$|^_frozenlist\.c$|^_propcache"), "aiohttp"),
    (
        re.compile(r"^(db|table|memtable|util|cache|env|file|options|port|monitoring)/.*\.(cc|h)$"),
        "rocksdict (RocksDB)",
    ),
    (re.compile(r"\.rs$"), "Rust extensions (rocksdict, orjson)"),
    # CPython's own sqlite3 module and the SQLite library under it: the SQLite store.
    (re.compile(r"^(cursor|connection|statement|row|blob|microprotocols)\.c(\.h)?$"), SQLITE),
    # The standard library's compiled modules (the asyncio loop, json, sockets, hashes).
    (
        re.compile(
            r"^(_asynciomodule|_json|socketmodule|selectmodule|_hashopenssl|_queuemodule"
            r"|_ssl|_bz2module|binascii|zlibmodule)\.c(\.h)?$"
        ),
        STDLIB,
    ),
)
# Shared libraries a frame may name on its own (not inside a package's folder).
SHARED_LIBRARIES: Final = (
    ("librdkafka", "librdkafka"),
    ("libsqlite3", SQLITE),
    ("_sqlite3", SQLITE),
    ("libpq", "psycopg / libpq"),
    ("libcrypto", STDLIB),
    ("libssl", STDLIB),
)
PY_LIBRARY_NAMES: Final = {
    "confluent_kafka": "confluent-kafka",
    "fastavro": "fastavro",
    "aiohttp": "aiohttp",
    "psycopg": "psycopg / libpq",
    "psycopg_pool": "psycopg / libpq",
    "prometheus_client": "prometheus-client",
    "pydantic": "pydantic",
    "rocksdict": "rocksdict (RocksDB)",
    "psycopg_binary": "psycopg / libpq",
    "pydantic_core": "pydantic",
    "msgspec": "msgspec",
    "cimpl": "confluent-kafka",
    "orjson": "orjson",
    "multidict": "aiohttp",
    "yarl": "aiohttp",
}
FRAME: Final = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# A thread blocked in one of these (waiting for the GIL, a lock, a condition, I/O) is
# not running: py-spy's --native stacks still show such threads now and then.
WAITS: Final = frozenset(
    {
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "pthread_cond_clockwait",
        "cnd_wait",
        "cnd_timedwait",
        "sem_wait",
        "sem_timedwait",
        "sem_clockwait",
        "take_gil",
        "PyThread_acquire_lock_timed",
        "epoll_wait",
        "poll",
        "ppoll",
        "select",
        "pselect",
        "nanosleep",
        "clock_nanosleep",
        "accept",
        "accept4",
        "__futex_abstimed_wait_common",
        "futex_wait",
    }
)
WAIT_DEPTH: Final = 4
# Standard modules that are part of how Python code is written (enums, dataclasses,
# named tuples) rather than libraries: their time is the calling code's.
LANGUAGE_MODULES: Final = frozenset(
    {
        "enum.py",
        "dataclasses.py",
        "collections/__init__.py",
        "typing.py",
        "functools.py",
        "abc.py",
        "copy.py",
    }
)


def owner(frame: str) -> str | None:
    """Whose frame this is, or None for the interpreter's and libc's own frames."""
    match = FRAME.match(frame)
    if match is None:
        return None
    file = match["file"]
    top = file.split("/", 1)[0]
    if file.endswith(".py"):
        if top in ("services", "bench"):
            return CRMSYNC
        if file in LANGUAGE_MODULES:
            return None
        return PY_LIBRARY_NAMES.get(top, STDLIB)
    if ".so" in file:
        # A compiled module inside a package ("confluent_kafka/cimpl....so") or a
        # library a wheel bundles ("librdkafka-....so.1"); the interpreter and libc
        # are nobody's.
        if "/" in file:
            return PY_LIBRARY_NAMES.get(top, top)
        for prefix, library in SHARED_LIBRARIES:
            if file.startswith(prefix):
                return library
        if file.startswith("_") and ".cpython-" in file and not file.startswith("_datetime"):
            return STDLIB
        return None
    # A C source named in a frame: its own name, or a path inside the library's tree.
    name = file.rsplit("/", 1)[-1]
    for pattern, library in NATIVE_LIBRARIES:
        if pattern.search(name) or pattern.search(file):
            return library
    return None


def waiting(frames: list[str]) -> bool:
    for frame in frames[-WAIT_DEPTH:]:
        match = FRAME.match(frame)
        if match is not None and match["function"] in WAITS:
            return True
    return False


def attribute(stack: str) -> str | None:
    """The owner of a sample, the innermost frame that has one; None for a thread that
    is waiting rather than running."""
    frames = stack.split(";")
    if waiting(frames):
        return None
    for frame in reversed(frames):
        found = owner(frame)
        if found is not None:
            return found
    return STDLIB


def read_samples(path: Path) -> Counter[str]:
    """py-spy's raw (collapsed) output: ``frame;frame;...;leaf count`` per line."""
    owners: Counter[str] = Counter()
    if not path.exists():
        return owners
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            who = attribute(stack)
            if who is not None:
                owners[who] += int(count)
    return owners


# --- threads -----------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(parents.get(pid, ()))
    return found


def thread_ticks(root: int) -> dict[str, int]:
    """CPU ticks of a process tree's threads: librdkafka's own threads, and the rest."""
    ticks = {LIBRDKAFKA_THREADS: 0, "python threads": 0}
    for pid in _descendants(root):
        tasks = Path(f"/proc/{pid}/task")
        try:
            tids = list(tasks.iterdir())
        except OSError:
            continue
        for task in tids:
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            used = int(fields[11]) + int(fields[12])
            kind = LIBRDKAFKA_THREADS if name.startswith("rdk:") else "python threads"
            ticks[kind] += used
    return ticks


# --- a profiled window ------------------------------------------------------------------


@dataclass
class Profile:
    """One service's profile over a window: its threads' ticks and its stack samples."""

    name: str
    before: dict[str, int]
    after: dict[str, int]
    samples: Counter[str]

    def shares(self) -> dict[str, float]:
        """Each owner's share of the process tree's CPU: librdkafka's threads by their
        ticks, the Python threads' ticks split by the owners of their samples."""
        spent = {k: self.after[k] - self.before[k] for k in self.after}
        whole = sum(spent.values())
        if whole <= 0:
            return {}
        split = {LIBRDKAFKA_THREADS: spent[LIBRDKAFKA_THREADS] / whole}
        python = spent["python threads"] / whole
        sampled = sum(self.samples.values())
        if not sampled:
            split["python threads (not sampled)"] = python
        for who, count in self.samples.items():
            split[who] = split.get(who, 0.0) + python * count / sampled
        return split


@contextmanager
def profiled(pids: Mapping[str, int], out_dir: Path, label: str) -> Iterator[list[Profile]]:
    """py-spy on each process tree for the duration of the block; the profiles are
    filled in when it ends."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    before = {name: thread_ticks(pid) for name, pid in pids.items()}
    for name, pid in pids.items():
        raw = out_dir / f"{label}-{name}.txt"
        command = [spy, "record", "--native", "--subprocesses", "--format", "raw"]
        command += ["--rate", str(SAMPLE_RATE), "--pid", str(pid), "--output", str(raw)]
        spies[name] = (
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            raw,
        )
    profiles: list[Profile] = []
    try:
        yield profiles
    finally:
        after = {name: thread_ticks(pid) for name, pid in pids.items()}
        for process, _raw in spies.values():
            process.send_signal(signal.SIGINT)
        for process, _raw in spies.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name, (_process, raw) in spies.items():
            profiles.append(Profile(name, before[name], after[name], read_samples(raw)))
