#!/usr/bin/env python3
"""Run local Apache Kafka clusters (KRaft, no Docker) for `make run`, the tests and benchmarks.

The broker is Apache Kafka 4.1.2 from the official org.apache.kafka jars, resolved by Maven
through pom.xml next to this script and run on the machine's JDK. Every node is a combined
broker+controller on 127.0.0.1 with a static controller quorum. Node i (1-based) listens on
port P+i-1 and its controller on P+100+i-1.

This file is stdlib-only on purpose: it runs before any virtualenv exists. It is both a CLI
and a module (fetch_jars, start_cluster, stop_cluster, stop_all, start_node, stop_node,
kill_node, status).

State lives under <var>/kafka/, where <var> is var/ at the repository root unless
$CRMSYNC_VAR_DIR or --var-dir says otherwise:

    libs/                        the jars and a stamp of the pom they were resolved from
    <name>/cluster.json          cluster id and shape, created once
    <name>/node-<i>/             data/, logs/server.log, server.properties, console.log, kafka.pid

Starting a cluster takes these steps:

1. Make sure the jars are present: fetch them with Maven if missing or the pom changed.
2. Load the cluster's layout, or create it with a new cluster id; refuse to change the
   node count of an existing cluster, or the ports of a running one.
3. Leave the nodes that already run alone; write server.properties for the others and
   check that their ports are free.
4. Format the storage of the nodes that were never formatted.
5. Launch each missing node as a detached JVM and record its pid.
6. Wait until every node has logged "Kafka Server started" and accepts TCP connections.
7. Return (the CLI prints) the bootstrap servers string.

Usage:

    local_kafka.py fetch
    local_kafka.py start [--name NAME] [--brokers N] [--port P] [--heap 512m] [--timeout S]
    local_kafka.py stop [--name NAME | --all] [--purge] [--timeout S]
    local_kafka.py stop-node --name NAME --node I [--timeout S]
    local_kafka.py start-node --name NAME --node I [--timeout S]
    local_kafka.py kill-node --name NAME --node I
    local_kafka.py status [--name NAME]

NAME defaults to "local", and every command also takes --var-dir. `start` prints the
bootstrap servers as its only stdout line; progress goes to stderr. `status` exits 0 when
every node is up, 3 otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
DEFAULT_VAR_DIR = HERE.parents[1] / "var"
VAR_DIR_ENV = "CRMSYNC_VAR_DIR"

HOST = "127.0.0.1"
DEFAULT_NAME = "local"
DEFAULT_PORT = 9092
DEFAULT_HEAP = "512m"
CONTROLLER_PORT_OFFSET = 100
# Node ports run from P to P+N-1 and controllers from P+100, so more nodes would overlap.
MAX_BROKERS = CONTROLLER_PORT_OFFSET
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# After SIGKILL the kernel frees the process almost at once; this only bounds a wedged exit.
KILL_TIMEOUT_S = 10.0
FORMAT_TIMEOUT_S = 120.0
MAVEN_TIMEOUT_S = 600.0
POLL_S = 0.2
STATUS_NOT_RUNNING = 3

MAIN_CLASS = "kafka.Kafka"
STARTED_MARKER = b"Kafka Server started"
LOG_TAIL_LINES = 40
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HEAP_RE = re.compile(r"[1-9][0-9]*[kKmMgG]?")
# Names under var/kafka that are tooling, not clusters.
RESERVED_NAMES = frozenset({"libs", "libs.partial", "libs.old"})

_log = logging.getLogger("local_kafka")

# JVMs this process launched. Keeping the Popen objects lets poll() reap them once they exit,
# so a long-lived caller (the test suite killing and restarting nodes) collects no zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _release_children() -> None:
    """Let the interpreter exit quietly while brokers it launched keep running.

    Popen.__del__ warns about every child without a return code, but a detached broker
    outliving its launcher is the point, and nothing will ever wait for it here.
    """
    for child in _CHILDREN.values():
        if child.poll() is None:
            child.returncode = 0
    _CHILDREN.clear()


class KafkaToolError(Exception):
    """A failure the CLI reports as a one-line error (plus log tails) and exit code 1."""


@dataclass(frozen=True)
class Layout:
    """A cluster's identity and shape; saved as cluster.json on first start."""

    cluster_id: str
    brokers: int
    port: int
    heap: str

    def broker_port(self, node: int) -> int:
        return self.port + node - 1

    def controller_port(self, node: int) -> int:
        return self.port + CONTROLLER_PORT_OFFSET + node - 1

    @property
    def nodes(self) -> range:
        return range(1, self.brokers + 1)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{self.broker_port(node)}" for node in self.nodes)


@dataclass(frozen=True)
class NodePaths:
    node: int
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def console(self) -> Path:
        return self.root / "console.log"


@dataclass(frozen=True)
class NodeStatus:
    node: int
    port: int
    controller_port: int
    pid: int | None
    answering: bool

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "up" if self.answering else "starting"


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    cluster_id: str
    bootstrap: str
    nodes: tuple[NodeStatus, ...]

    @property
    def all_up(self) -> bool:
        return all(node.state == "up" for node in self.nodes)


@dataclass
class _Pending:
    """A node start_cluster waits for; log_offset is where this launch's log lines begin.

    started is True once the node logged "Kafka Server started" since its launch, or from
    the outset for a node that was already running (launched False).
    """

    paths: NodePaths
    pid: int
    log_offset: int
    launched: bool
    started: bool


# --- paths, layout and locking ---------------------------------------------------------


def _resolve_var_dir(var_dir: Path | None) -> Path:
    if var_dir is None:
        env = os.environ.get(VAR_DIR_ENV)
        var_dir = Path(env) if env else DEFAULT_VAR_DIR
    # Absolute, because the JVMs run with their node directory as working directory.
    return var_dir.expanduser().resolve()


def _kafka_dir(var_dir: Path | None) -> Path:
    return _resolve_var_dir(var_dir) / "kafka"


def _cluster_dir(name: str, var_dir: Path | None) -> Path:
    if not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
        raise KafkaToolError(f"invalid cluster name {name!r}")
    return _kafka_dir(var_dir) / name


def _node_paths(cluster_dir: Path, node: int) -> NodePaths:
    return NodePaths(node=node, root=cluster_dir / f"node-{node}")


def _load_layout(cluster_dir: Path) -> Layout | None:
    try:
        raw = json.loads((cluster_dir / "cluster.json").read_text())
    except FileNotFoundError:
        return None
    return Layout(
        cluster_id=str(raw["cluster_id"]),
        brokers=int(raw["brokers"]),
        port=int(raw["port"]),
        heap=str(raw["heap"]),
    )


def _require_layout(name: str, var_dir: Path | None) -> tuple[Path, Layout]:
    cluster_dir = _cluster_dir(name, var_dir)
    layout = _load_layout(cluster_dir)
    if layout is None:
        raise KafkaToolError(f"no cluster {name!r} under {cluster_dir.parent}")
    return cluster_dir, layout


def _save_layout(cluster_dir: Path, layout: Layout) -> None:
    cluster_dir.mkdir(parents=True, exist_ok=True)
    tmp = cluster_dir / "cluster.json.tmp"
    tmp.write_text(json.dumps(asdict(layout), indent=2) + "\n")
    tmp.replace(cluster_dir / "cluster.json")


def _new_cluster_id() -> str:
    """A Kafka Uuid in its usual form (URL-safe base64 of 16 random bytes, no padding).

    Generated here rather than with `StorageTool random-uuid` to save a JVM start. Kafka
    rejects ids starting with "-" (they parse as options), so those are drawn again.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _check_shape(*, brokers: int, port: int, heap: str) -> None:
    if not 1 <= brokers <= MAX_BROKERS:
        raise KafkaToolError(f"--brokers must be between 1 and {MAX_BROKERS}")
    if port < 1024 or port + CONTROLLER_PORT_OFFSET + brokers - 1 > 65535:
        raise KafkaToolError(f"--port {port} leaves no room for {brokers} node(s)")
    if not HEAP_RE.fullmatch(heap):
        raise KafkaToolError(f"--heap {heap!r} is not a JVM size such as 512m or 1g")


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise concurrent callers (say, `make run` and a test session) on one cluster."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- jars ------------------------------------------------------------------------------


def _pom_digest() -> str:
    # The log4j config is not part of the jars, so only the pom decides a re-fetch.
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _jars_current(libs: Path, digest: str) -> bool:
    try:
        return (libs / ".pom-sha256").read_text().strip() == digest
    except FileNotFoundError:
        return False


def _run_maven(output_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaToolError("Maven (mvn) is not on PATH; it resolves the Kafka jars")
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
        "-DincludeScope=runtime",
    ]
    # Maven's output is noise when it works; keep it for the error message only.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise KafkaToolError(f"Maven failed (exit {result.returncode}):\n{output}")
    if not any(output_dir.glob("kafka_2.13-*.jar")):
        raise KafkaToolError(f"Maven succeeded but left no kafka_2.13 jar in {output_dir}")


def fetch_jars(*, var_dir: Path | None = None) -> Path:
    """Resolve the Kafka jars into <var>/kafka/libs unless they match the pom already.

    Returns the libs directory. The jars land in a scratch directory first and replace the
    old set in one rename, so an interrupted fetch never leaves a half-filled classpath.
    """
    kafka_dir = _kafka_dir(var_dir)
    libs = kafka_dir / "libs"
    digest = _pom_digest()
    if _jars_current(libs, digest):
        return libs
    with _locked(kafka_dir / ".fetch.lock"):
        if _jars_current(libs, digest):  # another caller fetched while we waited
            return libs
        _log.info("fetching the Kafka jars with Maven into %s", libs)
        partial = kafka_dir / "libs.partial"
        old = kafka_dir / "libs.old"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            _run_maven(partial)
            (partial / ".pom-sha256").write_text(digest + "\n")
            shutil.rmtree(old, ignore_errors=True)
            if libs.exists():
                libs.rename(old)
            partial.rename(libs)
        finally:
            # After a success both are gone or stale; after a failure, partial is junk.
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return libs


# --- processes -------------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """The process's command line joined by spaces, or None if it is gone or a zombie."""
    if Path("/proc").is_dir():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A zombie's cmdline is empty.
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or None
    # No /proc (macOS): ps prints the arguments joined by spaces as well.
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def _is_node_process(pid: int, paths: NodePaths) -> bool:
    """True only for the live Kafka JVM of this very node, so a recycled pid is never hit."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own unreaped child cannot have a recycled pid, and poll() is exact. Its cmdline
        # is no help here: it reads empty for a moment right after the exec.
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    cmdline = _cmdline(pid)
    return cmdline is not None and f"{MAIN_CLASS} {paths.properties}" in cmdline


def _read_pid(paths: NodePaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running_pid(paths: NodePaths) -> int | None:
    pid = _read_pid(paths)
    if pid is not None and _is_node_process(pid, paths):
        return pid
    return None


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
        return True
    return False


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the JVM sets it, so a port in TIME_WAIT after a kill counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaToolError("java is not on PATH (and JAVA_HOME is unset); Kafka needs JDK 17+")
    return java


def _log_opts(paths: NodePaths) -> list[str]:
    return [
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={paths.logs}",
    ]


def _jvm_opts(paths: NodePaths, heap: str) -> list[str]:
    # The G1 settings are the ones Kafka's own start scripts use.
    return [
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        *_log_opts(paths),
    ]


def _tail(path: Path, *, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0
            handle.seek(max(start, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _failure_report(pending: _Pending) -> str:
    return (
        f"--- tail of {pending.paths.server_log} ---\n"
        f"{_tail(pending.paths.server_log, offset=pending.log_offset)}\n"
        f"--- tail of {pending.paths.console} ---\n"
        f"{_tail(pending.paths.console, lines=10)}"
    )


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(targets: dict[int, NodePaths], timeout: float) -> dict[int, NodePaths]:
    """Wait for the processes (pid -> node) to exit; returns the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = dict(targets)
    while alive and time.monotonic() < deadline:
        alive = {pid: paths for pid, paths in alive.items() if _is_node_process(pid, paths)}
        if alive:
            time.sleep(POLL_S)
    return alive


def _stop_processes(targets: dict[int, NodePaths], *, timeout: float) -> None:
    """SIGTERM every process, give each up to `timeout` seconds, then SIGKILL the rest.

    All nodes get the signal together so every broker's controlled shutdown is approved
    while the controller quorum still stands. One at a time, the last broker would wait for
    a quorum that is already gone (Kafka gives that up to 5 minutes).
    """
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    stuck = _wait_gone(targets, timeout)
    for pid, paths in stuck.items():
        _log.warning("node in %s ignored SIGTERM for %.0fs; killing it", paths.root, timeout)
        _signal(pid, signal.SIGKILL)
    if _wait_gone(stuck, KILL_TIMEOUT_S):
        raise KafkaToolError(f"processes {sorted(stuck)} survived SIGKILL")
    for paths in targets.values():
        paths.pid_file.unlink(missing_ok=True)


# --- starting --------------------------------------------------------------------------


def _escape(value: object) -> str:
    # java.util.Properties reads a backslash as an escape, and a var dir path may hold one.
    return str(value).replace("\\", "\\\\")


def _server_properties(layout: Layout, node: int, paths: NodePaths) -> str:
    voters = ",".join(f"{n}@{HOST}:{layout.controller_port(n)}" for n in layout.nodes)
    # Internal topics need as many replicas as the cluster can give, up to the usual 3, and
    # an ISR floor of 2 where possible so the fault tests see real durability behaviour.
    replicas = min(layout.brokers, 3)
    min_isr = min(layout.brokers, 2)
    port = layout.broker_port(node)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{layout.controller_port(node)}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": paths.data,
        "default.replication.factor": replicas,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Topics are created explicitly by crmsync; a typo must fail, not invent a topic.
        "auto.create.topics.enable": "false",
        # The default 3 s delay only helps big consumer groups; locally it slows every test.
        "group.initial.rebalance.delay.ms": 0,
    }
    header = "# Written by deploy/kafka/local_kafka.py on every start; edits are overwritten.\n"
    return header + "".join(f"{key}={_escape(value)}\n" for key, value in settings.items())


def _prepare_node(layout: Layout, node: int, paths: NodePaths) -> None:
    for directory in (paths.data, paths.logs):
        directory.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(_server_properties(layout, node, paths))
    for port in (layout.broker_port(node), layout.controller_port(node)):
        if not _port_free(port):
            raise KafkaToolError(
                f"node {node}: port {HOST}:{port} is taken by another process "
                "(another Kafka? see `ss -ltnp`)"
            )


def _format_storage(layout: Layout, nodes: dict[int, NodePaths], libs: Path) -> None:
    """Format, in parallel, the log dirs of the nodes that have no meta.properties yet."""
    todo = {n: p for n, p in nodes.items() if not (p.data / "meta.properties").exists()}
    running: dict[int, subprocess.Popen[str]] = {}
    for node, paths in todo.items():
        command = [
            _java(),
            # A one-shot tool: C1 only and the serial GC cut its CPU time by about a third,
            # which counts when three nodes format at once on a small machine.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            *_log_opts(paths),
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            layout.cluster_id,
            "-c",
            str(paths.properties),
            # No --standalone: the static controller.quorum.voters list defines the quorum.
            "--ignore-formatted",
        ]
        running[node] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    # Wait for all before judging any, so no formatter is left running unwaited.
    outputs = {
        node: process.communicate(timeout=FORMAT_TIMEOUT_S)[0] for node, process in running.items()
    }
    for node, process in running.items():
        if process.returncode != 0:
            raise KafkaToolError(f"formatting node {node} failed:\n{outputs[node].strip()}")


def _launch(paths: NodePaths, *, heap: str, libs: Path) -> _Pending:
    command = [
        _java(),
        *_jvm_opts(paths, heap),
        "-cp",
        f"{libs}/*",
        MAIN_CLASS,
        str(paths.properties),
    ]
    try:
        log_offset = paths.server_log.stat().st_size
    except FileNotFoundError:
        log_offset = 0
    with paths.console.open("ab") as console:
        # A new session detaches the JVM from the caller's terminal and process group, so
        # Ctrl-C in `make` or the end of a test session does not take the broker down.
        process = subprocess.Popen(
            command,
            cwd=paths.root,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    paths.pid_file.write_text(f"{process.pid}\n")
    return _Pending(
        paths=paths,
        pid=process.pid,
        log_offset=log_offset,
        launched=True,
        started=False,
    )


def _logged_started(pending: _Pending) -> bool:
    try:
        with pending.paths.server_log.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            # A smaller file than at launch means log4j rolled it: search it all.
            handle.seek(pending.log_offset if pending.log_offset <= size else 0)
            return STARTED_MARKER in handle.read()
    except FileNotFoundError:
        return False


def _wait_started(pending: list[_Pending], *, layout: Layout, timeout: float) -> None:
    """Wait until each node logged its start since launch and its broker port answers."""
    deadline = time.monotonic() + timeout
    waiting = list(pending)
    while waiting:
        for item in list(waiting):
            node = item.paths.node
            if not _is_node_process(item.pid, item.paths):
                item.paths.pid_file.unlink(missing_ok=True)
                raise KafkaToolError(f"node {node} exited while starting\n{_failure_report(item)}")
            item.started = item.started or _logged_started(item)
            port = layout.broker_port(node)
            if item.started and _port_answers(port):
                if item.launched:
                    _log.info("node %d is up on %s:%d", node, HOST, port)
                waiting.remove(item)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            item = waiting[0]
            raise KafkaToolError(
                f"node {item.paths.node} did not start within {timeout:.0f}s "
                f"(it is still running; stop it with `stop`)\n{_failure_report(item)}"
            )
        time.sleep(POLL_S)


def _layout_for_start(
    cluster_dir: Path, *, brokers: int, port: int, heap: str
) -> tuple[Layout, bool]:
    """Step 2: the saved layout, or a new one (True when new).

    The heap may change at any start. The ports may change while no node runs: with a
    static quorum the voters' addresses come from the configuration, not from the data, so
    the same cluster can come up elsewhere (say `make run` on 9092 after a run on 19092).
    The node count may not: the data records which nodes vote.
    """
    saved = _load_layout(cluster_dir)
    if saved is None:
        layout = Layout(cluster_id=_new_cluster_id(), brokers=brokers, port=port, heap=heap)
        _save_layout(cluster_dir, layout)
        return layout, True
    name = cluster_dir.name
    if saved.brokers != brokers:
        raise KafkaToolError(
            f"cluster {name!r} exists with {saved.brokers} node(s); run "
            f"`stop --name {name} --purge` to recreate it with {brokers}"
        )
    if saved.port != port and _running_targets(cluster_dir, saved.nodes):
        raise KafkaToolError(
            f"cluster {name!r} is running on port {saved.port}; stop it before "
            f"starting it on port {port}"
        )
    layout = Layout(cluster_id=saved.cluster_id, brokers=brokers, port=port, heap=heap)
    if layout != saved:
        _save_layout(cluster_dir, layout)
    return layout, False


def _start_nodes(
    cluster_dir: Path, layout: Layout, nodes: list[int], *, libs: Path, timeout: float
) -> list[int]:
    """Steps 3 to 6 for the given nodes; returns the ones it launched."""
    pending: list[_Pending] = []
    to_launch: dict[int, NodePaths] = {}
    # Step 3: leave running nodes alone, prepare the others.
    for node in nodes:
        paths = _node_paths(cluster_dir, node)
        pid = _running_pid(paths)
        if pid is None:
            _prepare_node(layout, node, paths)
            to_launch[node] = paths
        else:
            # Already running: only its port has to answer.
            pending.append(
                _Pending(paths=paths, pid=pid, log_offset=0, launched=False, started=True)
            )
    # Step 4: format what was never formatted.
    _format_storage(layout, to_launch, libs)
    # Step 5: launch.
    for node, paths in to_launch.items():
        _log.info("starting node %d of cluster %r", node, cluster_dir.name)
        pending.append(_launch(paths, heap=layout.heap, libs=libs))
    # Step 6: wait for every node.
    _wait_started(pending, layout=layout, timeout=timeout)
    return sorted(to_launch)


def start_cluster(
    name: str = DEFAULT_NAME,
    *,
    brokers: int = 1,
    port: int = DEFAULT_PORT,
    heap: str = DEFAULT_HEAP,
    timeout: float = START_TIMEOUT_S,
    var_dir: Path | None = None,
) -> str:
    """Start (or find running) cluster `name`; returns its bootstrap servers string."""
    _check_shape(brokers=brokers, port=port, heap=heap)
    cluster_dir = _cluster_dir(name, var_dir)
    began = time.monotonic()
    # Step 1: the jars.
    libs = fetch_jars(var_dir=var_dir)
    with _locked(cluster_dir / ".lock"):
        # Step 2: the layout.
        layout, created = _layout_for_start(cluster_dir, brokers=brokers, port=port, heap=heap)
        if created:
            _log.info("created cluster %r (id %s) in %s", name, layout.cluster_id, cluster_dir)
        # Steps 3 to 6.
        nodes = list(layout.nodes)
        launched = _start_nodes(cluster_dir, layout, nodes, libs=libs, timeout=timeout)
    if launched:
        _log.info("cluster %r is up after %.1fs", name, time.monotonic() - began)
    else:
        _log.info("cluster %r was already running", name)
    # Step 7: the bootstrap servers.
    return layout.bootstrap


def start_node(
    name: str, node: int, *, timeout: float = START_TIMEOUT_S, var_dir: Path | None = None
) -> str:
    """Start one node again on its existing data; returns its host:port.

    It only comes up while a controller majority (counting itself) can form, which is what
    a fault test restarting one node of three expects.
    """
    cluster_dir, layout = _require_layout(name, var_dir)
    _check_node(layout, node)
    libs = fetch_jars(var_dir=var_dir)
    with _locked(cluster_dir / ".lock"):
        _start_nodes(cluster_dir, layout, [node], libs=libs, timeout=timeout)
    return f"{HOST}:{layout.broker_port(node)}"


# --- stopping and status ---------------------------------------------------------------


def _check_node(layout: Layout, node: int) -> None:
    if node not in layout.nodes:
        raise KafkaToolError(f"--node must be between 1 and {layout.brokers}")


def _running_targets(cluster_dir: Path, nodes: range | list[int]) -> dict[int, NodePaths]:
    """pid -> paths of the nodes that run; stale pid files of the others are removed."""
    targets: dict[int, NodePaths] = {}
    for node in nodes:
        paths = _node_paths(cluster_dir, node)
        pid = _running_pid(paths)
        if pid is None:
            paths.pid_file.unlink(missing_ok=True)
        else:
            targets[pid] = paths
    return targets


def stop_cluster(
    name: str = DEFAULT_NAME,
    *,
    purge: bool = False,
    timeout: float = STOP_TIMEOUT_S,
    var_dir: Path | None = None,
) -> list[int]:
    """Stop every node of `name` (a no-op if none runs); returns the nodes it stopped.

    With purge, the cluster's directory (data, logs, id) is deleted as well.
    """
    cluster_dir = _cluster_dir(name, var_dir)
    layout = _load_layout(cluster_dir)
    if layout is None:
        if purge:
            shutil.rmtree(cluster_dir, ignore_errors=True)
        return []
    with _locked(cluster_dir / ".lock"):
        targets = _running_targets(cluster_dir, layout.nodes)
        if targets:
            _log.info("stopping cluster %r (%d node(s))", name, len(targets))
        _stop_processes(targets, timeout=timeout)
        if purge:
            shutil.rmtree(cluster_dir)
            _log.info("deleted %s", cluster_dir)
    return sorted(paths.node for paths in targets.values())


def cluster_names(*, var_dir: Path | None = None) -> list[str]:
    """The clusters that exist under <var>/kafka, running or not."""
    kafka_dir = _kafka_dir(var_dir)
    if not kafka_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in kafka_dir.iterdir()
        if entry.name not in RESERVED_NAMES and (entry / "cluster.json").is_file()
    )


def stop_all(
    *, purge: bool = False, timeout: float = STOP_TIMEOUT_S, var_dir: Path | None = None
) -> list[str]:
    """Stop every cluster under <var>/kafka; returns their names."""
    names = cluster_names(var_dir=var_dir)
    for name in names:
        stop_cluster(name, purge=purge, timeout=timeout, var_dir=var_dir)
    return names


def stop_node(
    name: str, node: int, *, timeout: float = STOP_TIMEOUT_S, var_dir: Path | None = None
) -> bool:
    """Stop one node gracefully (SIGTERM); returns whether it was running."""
    cluster_dir, layout = _require_layout(name, var_dir)
    _check_node(layout, node)
    with _locked(cluster_dir / ".lock"):
        targets = _running_targets(cluster_dir, [node])
        _stop_processes(targets, timeout=timeout)
    return bool(targets)


def kill_node(name: str, node: int, *, var_dir: Path | None = None) -> bool:
    """Kill one node with SIGKILL, as a crash would; returns whether it was running."""
    cluster_dir, layout = _require_layout(name, var_dir)
    _check_node(layout, node)
    with _locked(cluster_dir / ".lock"):
        targets = _running_targets(cluster_dir, [node])
        for pid in targets:
            _signal(pid, signal.SIGKILL)
        if _wait_gone(targets, KILL_TIMEOUT_S):
            raise KafkaToolError(f"node {node} survived SIGKILL")
        for paths in targets.values():
            paths.pid_file.unlink(missing_ok=True)
    return bool(targets)


def status(name: str = DEFAULT_NAME, *, var_dir: Path | None = None) -> ClusterStatus:
    """Which nodes of `name` run (pid checked) and answer on their broker port."""
    cluster_dir, layout = _require_layout(name, var_dir)
    nodes = []
    for node in layout.nodes:
        pid = _running_pid(_node_paths(cluster_dir, node))
        port = layout.broker_port(node)
        nodes.append(
            NodeStatus(
                node=node,
                port=port,
                controller_port=layout.controller_port(node),
                pid=pid,
                answering=pid is not None and _port_answers(port),
            )
        )
    return ClusterStatus(
        name=name, cluster_id=layout.cluster_id, bootstrap=layout.bootstrap, nodes=tuple(nodes)
    )


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--var-dir",
        type=Path,
        help=f"state directory (default: ${VAR_DIR_ENV} or var/ at the repository root)",
    )
    named = argparse.ArgumentParser(add_help=False, parents=[common])
    named.add_argument("--name", default=DEFAULT_NAME, help="cluster name (default: local)")
    one_node = argparse.ArgumentParser(add_help=False, parents=[named])
    one_node.add_argument("--node", type=int, required=True, help="node number, from 1")

    parser = argparse.ArgumentParser(
        prog="local_kafka.py", description="Local Apache Kafka (KRaft) clusters for crmsync."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", parents=[common], help="resolve the Kafka jars with Maven")
    start = commands.add_parser("start", parents=[named], help="start a cluster")
    start.add_argument("--brokers", type=int, default=1, help="number of nodes (default: 1)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help="first broker port")
    start.add_argument("--heap", default=DEFAULT_HEAP, help="JVM heap per node (default: 512m)")
    start.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds")
    stop = commands.add_parser("stop", parents=[named], help="stop a cluster")
    stop.add_argument("--all", action="store_true", help="stop every cluster under var/kafka")
    stop.add_argument("--purge", action="store_true", help="also delete the cluster's data")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds per node")
    stop_one = commands.add_parser("stop-node", parents=[one_node], help="stop one node")
    stop_one.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds")
    start_one = commands.add_parser("start-node", parents=[one_node], help="restart one node")
    start_one.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds")
    commands.add_parser("kill-node", parents=[one_node], help="kill -9 one node")
    commands.add_parser("status", parents=[named], help="show the nodes; exit 3 unless all up")
    return parser


def _print_status(cluster: ClusterStatus) -> None:
    print(f"cluster {cluster.name} (id {cluster.cluster_id}), bootstrap {cluster.bootstrap}")
    for node in cluster.nodes:
        pid = str(node.pid) if node.pid is not None else "-"
        print(
            f"  node {node.node}  {node.state:<8}  {HOST}:{node.port}  "
            f"controller {HOST}:{node.controller_port}  pid {pid}"
        )


def _run(args: argparse.Namespace) -> int:
    var_dir: Path | None = args.var_dir
    if args.command == "fetch":
        print(fetch_jars(var_dir=var_dir))
    elif args.command == "start":
        bootstrap = start_cluster(
            args.name,
            brokers=args.brokers,
            port=args.port,
            heap=args.heap,
            timeout=args.timeout,
            var_dir=var_dir,
        )
        print(bootstrap)
    elif args.command == "stop" and args.all:
        stop_all(purge=args.purge, timeout=args.timeout, var_dir=var_dir)
    elif args.command == "stop":
        stop_cluster(args.name, purge=args.purge, timeout=args.timeout, var_dir=var_dir)
    elif args.command == "stop-node":
        stop_node(args.name, args.node, timeout=args.timeout, var_dir=var_dir)
    elif args.command == "start-node":
        print(start_node(args.name, args.node, timeout=args.timeout, var_dir=var_dir))
    elif args.command == "kill-node":
        kill_node(args.name, args.node, var_dir=var_dir)
    elif args.command == "status":
        cluster = status(args.name, var_dir=var_dir)
        _print_status(cluster)
        return 0 if cluster.all_up else STATUS_NOT_RUNNING
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="local_kafka: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except KafkaToolError as error:
        print(f"local_kafka: error: {error}", file=sys.stderr)
        # `status` of a cluster that does not exist means "not running", not "broken".
        return STATUS_NOT_RUNNING if args.command == "status" else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
