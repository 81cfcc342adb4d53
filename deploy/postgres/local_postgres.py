#!/usr/bin/env python3
"""Run local PostgreSQL servers (no Docker) for `make run`, the tests and benchmarks.

The server is Debian's PostgreSQL (the postgresql-15 package, binaries under
/usr/lib/postgresql/<major>/bin); the script installs the package with apt-get when it is
missing and we are root (with deploy/apt_package.py, which the deploy scripts share). Each
instance is one cluster listening on 127.0.0.1 only, with trust authentication and a
superuser named crmsync that owns a database named crmsync.

PostgreSQL refuses to run as root. When this script runs as root, the instance belongs to
the `postgres` system user (created when missing), and initdb and pg_ctl run as that user
through runuser (or setpriv); the client tools (psql, createdb, pg_isready) run as the
caller over TCP.

This file is stdlib-only on purpose: it runs before any virtualenv exists. It is both a CLI
and a module (ensure_binaries, start, stop, restart, kill, status, dsn).

State lives under <var>/postgres/<name>/, where <var> is var/ at the repository root unless
$CRMSYNC_VAR_DIR or --var-dir says otherwise:

    data/                 the cluster (PGDATA), created once by initdb
    data/crmsync.conf     this script's settings, rewritten on every start and included
                          last by data/postgresql.conf (ALTER SYSTEM still overrides them)
    run/                  the Unix-domain socket
    postgres.log          the server log (pg_ctl -l)
    instance.json         port and settings of the last start, for restart and status

Starting an instance takes these steps:

1. Make sure the server binaries are installed (ensure_binaries) and pick the ones that
   match the data directory's major version.
2. Create the instance's directories, owned by the postgres user when we are root.
3. If the instance already runs (pid file, live postmaster of this data directory), leave
   it alone: refuse a different port, reload it if its settings changed, go to step 7.
4. Initialise the data directory once (initdb -A trust -U crmsync, UTF8).
5. Write crmsync.conf (port, socket directory, sizes, durability) and instance.json;
   check that the port is free and clear the lock files a crash left behind.
6. Start the server with `pg_ctl start -w -l postgres.log`.
7. Wait until it accepts connections on 127.0.0.1:<port> (pg_isready).
8. Create the crmsync database unless it exists.
9. Return (the CLI prints) the DSN, postgresql://crmsync@127.0.0.1:<port>/crmsync.

Durability stays as in production (fsync, synchronous_commit and full_page_writes on), so
the crash tests mean something. `--unsafe-fast` turns the three off for throwaway test
databases: much faster commits, but a crash of the machine (not of the server) can corrupt
the cluster.

Usage:

    local_postgres.py ensure
    local_postgres.py start [--name NAME] [--port P] [--unsafe-fast] [--timeout S]
    local_postgres.py stop [--name NAME] [--mode smart|fast|immediate] [--purge] [--timeout S]
    local_postgres.py restart [--name NAME] [--timeout S]
    local_postgres.py kill --name NAME
    local_postgres.py status [--name NAME]

NAME defaults to "local" and P to 5433 (5432 is left to a system server), and every
command also takes --var-dir. `start` and `restart` print the DSN as their only stdout
line; progress goes to stderr. `status` exits 0 when the server is up, 3 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
APT_MODULE = HERE.parent / "apt_package.py"
DEFAULT_VAR_DIR = HERE.parents[1] / "var"
VAR_DIR_ENV = "CRMSYNC_VAR_DIR"

PG_LIB_DIR = Path("/usr/lib/postgresql")
SERVER_TOOLS = ("pg_ctl", "initdb", "postgres")
APT_PACKAGE = "postgresql-15"
SERVER_ACCOUNT = "postgres"
SERVER_ACCOUNT_HOME = "/var/lib/postgresql"

HOST = "127.0.0.1"
SUPERUSER = "crmsync"
DATABASE = "crmsync"
DEFAULT_NAME = "local"
DEFAULT_PORT = 5433
STOP_MODES = ("smart", "fast", "immediate")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
# After SIGKILL the kernel frees the processes almost at once; this only bounds a wedged exit.
KILL_TIMEOUT_S = 10.0
INITDB_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 30.0
POLL_S = 0.2
STATUS_NOT_RUNNING = 3

# sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107
LOG_TAIL_LINES = 40
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONF_FILE = "crmsync.conf"
INCLUDE_LINE = f"include = '{CONF_FILE}'"

_log = logging.getLogger("local_postgres")


class PostgresToolError(Exception):
    """A failure the CLI reports as a one-line error (plus log tails) and exit code 1."""


@dataclass(frozen=True)
class InstancePaths:
    name: str
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def settings(self) -> Path:
        return self.root / "instance.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def pid_file(self) -> Path:
        return self.data / "postmaster.pid"

    @property
    def conf(self) -> Path:
        return self.data / CONF_FILE


@dataclass(frozen=True)
class Settings:
    """What a start asked for; saved as instance.json so restart can repeat it."""

    port: int
    unsafe_fast: bool


@dataclass(frozen=True)
class InstanceStatus:
    name: str
    data_dir: Path
    port: int | None
    pid: int | None
    answering: bool

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "up" if self.answering else "starting"

    @property
    def dsn(self) -> str | None:
        return dsn(self.port) if self.port is not None else None


@dataclass(frozen=True)
class _Account:
    """The system account the server runs as when we are root."""

    name: str
    uid: int
    gid: int


def dsn(port: int) -> str:
    """The DSN of the crmsync database of the instance listening on `port`."""
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/{DATABASE}"


# --- paths, settings and locking -------------------------------------------------------


def _resolve_var_dir(var_dir: Path | None) -> Path:
    if var_dir is None:
        env = os.environ.get(VAR_DIR_ENV)
        var_dir = Path(env) if env else DEFAULT_VAR_DIR
    # Absolute, because the server runs with its data directory as working directory.
    return var_dir.expanduser().resolve()


def _instance_paths(name: str, var_dir: Path | None) -> InstancePaths:
    if not NAME_RE.fullmatch(name):
        raise PostgresToolError(f"invalid instance name {name!r}")
    return InstancePaths(name=name, root=_resolve_var_dir(var_dir) / "postgres" / name)


def _load_settings(paths: InstancePaths) -> Settings | None:
    try:
        raw = json.loads(paths.settings.read_text())
    except FileNotFoundError:
        return None
    return Settings(port=int(raw["port"]), unsafe_fast=bool(raw["unsafe_fast"]))


def _check_port(port: int) -> None:
    if not 1024 <= port <= 65535:
        raise PostgresToolError(f"--port {port} is not between 1024 and 65535")


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise concurrent callers (say, `make run` and a test session) on one instance."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- binaries --------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _installed_bin_dirs() -> dict[str, Path]:
    """Major version -> bin directory, for every installed version with the server tools."""
    found: dict[str, Path] = {}
    if not PG_LIB_DIR.is_dir():
        return found
    for entry in PG_LIB_DIR.iterdir():
        bin_dir = entry / "bin"
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", entry.name):
            continue
        if all(os.access(bin_dir / tool, os.X_OK) for tool in SERVER_TOOLS):
            found[entry.name] = bin_dir
    return found


def _newest_bin_dir() -> Path | None:
    found = _installed_bin_dirs()
    if not found:
        return None
    return found[max(found, key=_version_key)]


@functools.cache
def _apt_package() -> ModuleType:
    """deploy/apt_package.py: deploy/ is no package, and this script runs by its path."""
    loaded = sys.modules.get("apt_package")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("apt_package", APT_MODULE)
    if spec is None or spec.loader is None:
        raise PostgresToolError(f"cannot load {APT_MODULE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["apt_package"] = module
    return module


def _apt_install(package: str) -> None:
    apt = _apt_package()
    try:
        apt.install(package)
    except apt.AptUnavailable:
        raise PostgresToolError(
            f"no PostgreSQL server under {PG_LIB_DIR}/*/bin and no apt-get to install one: "
            f"install PostgreSQL's server binaries (Debian's {package} package)"
        ) from None
    except apt.AptError as error:
        raise PostgresToolError(str(error)) from None


def ensure_binaries() -> Path:
    """The bin directory of the newest installed PostgreSQL, installing postgresql-15 if none.

    Only root can install; anyone else gets an error saying what to install.
    """
    found = _newest_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise PostgresToolError(
            f"no PostgreSQL server under {PG_LIB_DIR}/*/bin: install Debian's {APT_PACKAGE} "
            f"package (sudo apt-get install --no-install-recommends {APT_PACKAGE}), "
            "or run this script as root to have it installed"
        )
    _apt_install(APT_PACKAGE)
    found = _newest_bin_dir()
    if found is None:
        raise PostgresToolError(
            f"apt-get installed {APT_PACKAGE} but {PG_LIB_DIR}/*/bin still lacks "
            f"{', '.join(SERVER_TOOLS)}"
        )
    _log.info("installed PostgreSQL in %s", found)
    return found


def _bin_dir_for(paths: InstancePaths) -> Path:
    """Step 1: the binaries of the data directory's major version (the newest for a new one)."""
    newest = ensure_binaries()
    try:
        version = (paths.data / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return newest
    bin_dir = _installed_bin_dirs().get(version)
    if bin_dir is None:
        raise PostgresToolError(
            f"instance {paths.name!r} was created by PostgreSQL {version}, which is not "
            f"installed (newest: {newest.parent.name}); install postgresql-{version} or run "
            f"`stop --name {paths.name} --purge` to recreate it"
        )
    return bin_dir


def _tool(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if os.access(path, os.X_OK):
        return str(path)
    # Client tools come from postgresql-client-<major>, which the server package depends on.
    found = shutil.which(name)
    if found is None:
        raise PostgresToolError(f"{name} is neither in {bin_dir} nor on PATH")
    return found


# --- the server account ----------------------------------------------------------------


def _server_account() -> _Account | None:
    """The account that owns and runs the server when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        _create_server_account()
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    return _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_server_account() -> None:
    # As Debian's postgresql-common creates it, so installing the package later changes nothing.
    _log.info("creating the system user %s", SERVER_ACCOUNT)
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            SERVER_ACCOUNT_HOME,
            "--no-create-home",
            "--shell",
            "/bin/bash",
            "--comment",
            "PostgreSQL administrator",
            SERVER_ACCOUNT,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # 9: the name exists, so someone else created it meanwhile.
    if result.returncode not in (0, 9):
        raise PostgresToolError(
            f"useradd {SERVER_ACCOUNT} failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()}"
        )


def _as_server(account: _Account | None, command: list[str]) -> list[str]:
    """`command` run as the server account when we are root, as is otherwise."""
    if account is None:
        return command
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", account.name, "--", *command]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [
            setpriv,
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            "--init-groups",
            "--",
            *command,
        ]
    raise PostgresToolError("running as root, but neither runuser nor setpriv is available")


def _chown_tree(path: Path, account: _Account) -> None:
    """Give `path` and everything below it to the account, unless it already owns the top."""
    if path.stat().st_uid == account.uid:
        return
    os.chown(path, account.uid, account.gid)
    for parent, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            os.chown(Path(parent, entry), account.uid, account.gid, follow_symlinks=False)


def _write_file(path: Path, text: str, account: _Account | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if account is not None:
        os.chown(tmp, account.uid, account.gid)
    tmp.replace(path)


# --- processes -------------------------------------------------------------------------


def _clean_env(*, client: bool = False) -> dict[str, str]:
    """The caller's environment without PG* variables, which would redirect the tools.

    PGDATA, PGPORT, PGHOST, PGSSLMODE, PGOPTIONS and friends from a developer's shell must
    not point initdb, the server or the clients anywhere else. The clients also get English
    messages, which _ensure_database reads.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if client:
        env["LC_ALL"] = "C"
    return env


def _run(
    command: list[str], *, timeout: float, cwd: Path | None = None, client: bool = False
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_clean_env(client=client),
            check=False,
        )
    except subprocess.TimeoutExpired:
        # Name the tool, not the runuser in front of it.
        tool = command[command.index("--") + 1] if "--" in command[:6] else command[0]
        raise PostgresToolError(f"{Path(tool).name} took over {timeout:.0f}s") from None


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).strip()


def _cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None if it is gone or a zombie."""
    if Path("/proc").is_dir():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A zombie's cmdline is empty.
        args = raw.rstrip(b"\0").split(b"\0")
        return [arg.decode(errors="replace") for arg in args] if raw else None
    # No /proc: ps prints the arguments joined by spaces.
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.split() or None


def _is_postmaster(pid: int, paths: InstancePaths) -> bool:
    """True only for the live postmaster of this very data directory (a pid can be reused)."""
    args = _cmdline(pid)
    if not args or Path(args[0]).name not in ("postgres", "postmaster"):
        return False
    # The postmaster works in its data directory; pg_ctl started it with -D <data>.
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/cwd")) == paths.data.resolve()
    return str(paths.data) in args


def _pid_file_lines(paths: InstancePaths) -> list[str]:
    """postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ..."""
    try:
        return paths.pid_file.read_text().splitlines()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return []


def _recorded_pid(paths: InstancePaths) -> int | None:
    lines = _pid_file_lines(paths)
    try:
        return int(lines[0])
    except (IndexError, ValueError):
        return None


def _running_pid(paths: InstancePaths) -> int | None:
    pid = _recorded_pid(paths)
    if pid is not None and _is_postmaster(pid, paths):
        return pid
    return None


def _running_port(paths: InstancePaths) -> int | None:
    lines = _pid_file_lines(paths)
    try:
        return int(lines[3])
    except (IndexError, ValueError):
        return None


def _proc_stat(pid_dir: Path) -> list[str] | None:
    """/proc/<pid>/stat from the state on (state, ppid, pgrp, ...), or None if it is gone."""
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # The command name before them is in parentheses and may hold spaces or parentheses.
    return text[text.rfind(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`: a postmaster's backends and helpers."""
    children = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(pid_dir)
        if fields and len(fields) > 1 and fields[0] not in ("Z", "X") and fields[1] == str(pid):
            children.append(int(pid_dir.name))
    return children


def _server_processes(paths: InstancePaths) -> list[int]:
    """Live (not zombie) PostgreSQL processes working in this instance's data directory.

    Every server process, the postmaster and each child it forks, runs in the data
    directory, and that outlives the postmaster, whose orphaned children are reparented.
    (Each child also leads its own process group, so a group kill would miss them.)
    """
    data = paths.data.resolve()
    found = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(pid_dir)
        if not fields or fields[0] in ("Z", "X"):
            continue
        args = _cmdline(int(pid_dir.name))
        if not args or not (
            args[0].startswith("postgres") or Path(args[0]).name in ("postgres", "postmaster")
        ):
            continue
        try:
            if Path(os.readlink(pid_dir / "cwd")) != data:
                continue
        except FileNotFoundError:
            continue  # gone meanwhile
        except OSError:
            pass  # another user's server process: count it, to be safe
        found.append(int(pid_dir.name))
    return found


def _wait_processes_gone(paths: InstancePaths, timeout: float) -> list[int]:
    """Wait for the instance's server processes to exit; returns the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = _server_processes(paths)
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_S)
        alive = _server_processes(paths)
    return alive


def _port_answers(bin_dir: Path, port: int) -> bool:
    """pg_isready: the server accepts connections (not merely the TCP port is open)."""
    command = [
        _tool(bin_dir, "pg_isready"),
        "-q",
        "-h",
        HOST,
        "-p",
        str(port),
        "-U",
        SUPERUSER,
        "-d",
        "postgres",
        "-t",
        "2",
    ]
    return _run(command, timeout=CLIENT_TIMEOUT_S, client=True).returncode == 0


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the server sets it, so a port in TIME_WAIT after a kill counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


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


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- starting --------------------------------------------------------------------------


def _prepare_dirs(paths: InstancePaths, account: _Account | None) -> None:
    """Step 2: the instance's directories, owned by the server account when we are root."""
    base = paths.root.parent
    created = not base.exists()
    for directory in (paths.root, paths.run):
        directory.mkdir(parents=True, exist_ok=True)
    if account is None:
        return
    if created:
        # Only the server account has to get through; a umask of 077 would lock it out.
        base.chmod(0o755)
    for directory in (paths.root, paths.run):
        _chown_tree(directory, account)
    probe = _run(_as_server(account, ["test", "-w", str(paths.root)]), timeout=CLIENT_TIMEOUT_S)
    if probe.returncode != 0:
        raise PostgresToolError(
            f"the {account.name} user cannot write {paths.root}: some parent directory is "
            "closed to it; let it through (chmod o+x) or point --var-dir or "
            f"${VAR_DIR_ENV} at a directory it can reach"
        )


@functools.cache
def _locale_args() -> tuple[str, ...]:
    """C.UTF-8 where the C library has it (Debian 12 does), else the plain C locale."""
    with contextlib.suppress(OSError):
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False)
        names = {name.lower() for name in listed.stdout.split()}
        if {"c.utf8", "c.utf-8"} & names:
            return ("--locale=C.UTF-8",)
    return ("--no-locale",)


def _initdb(
    paths: InstancePaths, bin_dir: Path, account: _Account | None, *, unsafe_fast: bool
) -> None:
    """Step 4: initialise the data directory unless that was done already."""
    if (paths.data / "PG_VERSION").exists():
        return
    # A data directory without PG_VERSION is what an interrupted initdb leaves behind.
    shutil.rmtree(paths.data, ignore_errors=True)
    _log.info("initialising %s (PostgreSQL %s)", paths.data, bin_dir.parent.name)
    command = [
        _tool(bin_dir, "initdb"),
        "-D",
        str(paths.data),
        "-U",
        SUPERUSER,
        "-A",
        "trust",
        "--encoding=UTF8",
        *_locale_args(),
        "--no-instructions",
        # A throwaway cluster need not wait for its files to reach the disk.
        *(["--no-sync"] if unsafe_fast else []),
    ]
    result = _run(_as_server(account, command), timeout=INITDB_TIMEOUT_S, cwd=paths.root)
    if result.returncode != 0:
        raise PostgresToolError(f"initdb failed (exit {result.returncode}):\n{_output(result)}")


def _ensure_include(paths: InstancePaths) -> None:
    """Make postgresql.conf read crmsync.conf last.

    Checked on every start, in case a start was interrupted between initdb and this.
    """
    conf = paths.data / "postgresql.conf"
    if INCLUDE_LINE in conf.read_text().splitlines():
        return
    with conf.open("a") as handle:
        handle.write(f"\n# Added by deploy/postgres/local_postgres.py.\n{INCLUDE_LINE}\n")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _server_conf(paths: InstancePaths, settings: Settings) -> str:
    socket_dir = str(paths.run)
    if len(f"{socket_dir}/.s.PGSQL.{settings.port}".encode()) > MAX_SOCKET_PATH:
        # Everything here connects over TCP; a socket the kernel cannot bind would be fatal.
        _log.info("%s is too long a path for a Unix socket; TCP only", socket_dir)
        socket_dir = ""
    durable = "off" if settings.unsafe_fast else "on"
    values = {
        "listen_addresses": _quote(HOST),
        "port": str(settings.port),
        "unix_socket_directories": _quote(socket_dir),
        "max_connections": "50",
        "shared_buffers": "'128MB'",
        # JIT compiling costs more than it saves on test and bench queries, and adds noise.
        "jit": "off",
        # Deterministic timestamps in query results and in the log.
        "timezone": "'UTC'",
        "log_timezone": "'UTC'",
        "log_line_prefix": "'%m [%p] %q%u@%d '",
        "fsync": durable,
        "synchronous_commit": durable,
        "full_page_writes": durable,
    }
    header = (
        "# Written by deploy/postgres/local_postgres.py on every start; edits are overwritten.\n"
        "# postgresql.auto.conf (ALTER SYSTEM) is read after this file and wins.\n"
    )
    return header + "".join(f"{key} = {value}\n" for key, value in values.items())


def _clear_stale_lock_files(paths: InstancePaths) -> None:
    """Remove the lock files of a server that died (kill, crash) once its processes are gone.

    postmaster.pid and the socket's lock file name the dead postmaster. The server refuses
    to start while that pid is a live or zombie process, and a zombie lingers wherever
    nothing reaps orphans (PID 1 in many containers). A clean stop leaves neither file.
    """
    leftovers = [paths.pid_file] if paths.pid_file.exists() else []
    leftovers += paths.run.glob(".s.PGSQL.*")
    if not leftovers:
        return
    alive = _wait_processes_gone(paths, KILL_TIMEOUT_S)
    if alive:
        raise PostgresToolError(
            f"the dead server of instance {paths.name!r} left processes {alive} running; "
            "they still use its data directory"
        )
    pid = _recorded_pid(paths)
    _log.info("removing the lock files of a dead server (pid %s)", pid if pid else "unknown")
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)


def _launch(paths: InstancePaths, bin_dir: Path, account: _Account | None, timeout: float) -> None:
    """Step 6: pg_ctl start, which returns once the server accepts connections."""
    offset = _log_size(paths.log)
    command = [
        _tool(bin_dir, "pg_ctl"),
        "start",
        "-D",
        str(paths.data),
        "-l",
        str(paths.log),
        "-w",
        "-t",
        str(max(1, math.ceil(timeout))),
        "-s",
    ]
    result = _run(_as_server(account, command), timeout=timeout + 30, cwd=paths.root)
    if result.returncode != 0:
        raise PostgresToolError(
            f"pg_ctl start failed (exit {result.returncode}): {_output(result)}\n"
            f"--- tail of {paths.log} ---\n{_tail(paths.log, offset=offset)}"
        )


def _wait_answering(paths: InstancePaths, bin_dir: Path, port: int, deadline: float) -> None:
    """Step 7."""
    while not _port_answers(bin_dir, port):
        if _running_pid(paths) is None:
            raise PostgresToolError(
                f"the server of instance {paths.name!r} exited\n"
                f"--- tail of {paths.log} ---\n{_tail(paths.log)}"
            )
        if time.monotonic() >= deadline:
            raise PostgresToolError(
                f"instance {paths.name!r} does not accept connections on {HOST}:{port} "
                f"(it is still running; stop it with `stop`)\n"
                f"--- tail of {paths.log} ---\n{_tail(paths.log)}"
            )
        time.sleep(POLL_S)


def _ensure_database(bin_dir: Path, port: int) -> None:
    """Step 8: create the crmsync database unless it exists."""
    common = ["-h", HOST, "-p", str(port), "-U", SUPERUSER]
    # psql -lqtA prints one database a line, its fields separated by "|", the name first.
    psql = [_tool(bin_dir, "psql"), "-X", "-lqtA", *common, "-d", "postgres"]
    listed = _run(psql, timeout=CLIENT_TIMEOUT_S, client=True)
    if listed.returncode != 0:
        raise PostgresToolError(f"psql -l failed (exit {listed.returncode}): {_output(listed)}")
    if DATABASE in {line.split("|", 1)[0] for line in listed.stdout.splitlines()}:
        return
    _log.info("creating the database %s", DATABASE)
    created = _run(
        [_tool(bin_dir, "createdb"), *common, DATABASE], timeout=CLIENT_TIMEOUT_S, client=True
    )
    # A concurrent caller may have created it between the two commands.
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise PostgresToolError(f"createdb failed (exit {created.returncode}): {_output(created)}")


def _reconfigure_running(
    paths: InstancePaths, bin_dir: Path, account: _Account | None, settings: Settings, pid: int
) -> None:
    """Step 3 for a running server: same port only; reload when the settings changed."""
    running_port = _running_port(paths)
    if running_port is not None and running_port != settings.port:
        raise PostgresToolError(
            f"instance {paths.name!r} is running on port {running_port}; stop it before "
            f"starting it on port {settings.port}"
        )
    conf = _server_conf(paths, settings)
    with contextlib.suppress(FileNotFoundError):
        if paths.conf.read_text() == conf:
            return
    # Durability settings take effect on reload; the rest of the file is unchanged.
    _log.info("reloading instance %r (pid %d) with new settings", paths.name, pid)
    _write_file(paths.conf, conf, account)
    _write_file(paths.settings, _settings_json(settings), account)
    command = [_tool(bin_dir, "pg_ctl"), "reload", "-D", str(paths.data), "-s"]
    result = _run(_as_server(account, command), timeout=CLIENT_TIMEOUT_S, cwd=paths.root)
    if result.returncode != 0:
        raise PostgresToolError(f"pg_ctl reload failed: {_output(result)}")


def _settings_json(settings: Settings) -> str:
    return json.dumps({"port": settings.port, "unsafe_fast": settings.unsafe_fast}) + "\n"


def start(
    name: str = DEFAULT_NAME,
    port: int = DEFAULT_PORT,
    *,
    unsafe_fast: bool = False,
    var_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> str:
    """Start (or find running) instance `name` on 127.0.0.1:`port`; returns the DSN."""
    _check_port(port)
    paths = _instance_paths(name, var_dir)
    settings = Settings(port=port, unsafe_fast=unsafe_fast)
    # Step 1: the binaries (a first apt-get install does not count against the timeout).
    bin_dir = _bin_dir_for(paths)
    account = _server_account()
    began = time.monotonic()
    deadline = began + timeout
    # Step 2: the directories.
    _prepare_dirs(paths, account)
    with _locked(paths.lock):
        pid = _running_pid(paths)
        if pid is not None:
            # Step 3: leave a running server alone.
            _reconfigure_running(paths, bin_dir, account, settings, pid)
            launched = False
        else:
            # Step 4: initdb once.
            _initdb(paths, bin_dir, account, unsafe_fast=unsafe_fast)
            _ensure_include(paths)
            # Step 5: the settings, the port, stale lock files.
            _write_file(paths.conf, _server_conf(paths, settings), account)
            _write_file(paths.settings, _settings_json(settings), account)
            if not _port_free(port):
                raise PostgresToolError(
                    f"port {HOST}:{port} is taken by another process "
                    "(another PostgreSQL? see `ss -ltnp`)"
                )
            _clear_stale_lock_files(paths)
            # Step 6: start.
            _log.info("starting instance %r on %s:%d", name, HOST, port)
            _launch(paths, bin_dir, account, max(1.0, deadline - time.monotonic()))
            launched = True
        # Steps 7 and 8: answering, with its database.
        _wait_answering(paths, bin_dir, port, deadline)
        _ensure_database(bin_dir, port)
    if launched:
        _log.info("instance %r is up after %.1fs", name, time.monotonic() - began)
    else:
        _log.info("instance %r was already running", name)
    # Step 9: the DSN.
    return dsn(port)


# --- stopping and status ---------------------------------------------------------------


def stop(
    name: str = DEFAULT_NAME,
    *,
    var_dir: Path | None = None,
    mode: str = "fast",
    purge: bool = False,
    timeout: float = STOP_TIMEOUT_S,
) -> bool:
    """Stop instance `name` (a no-op if it is not running); returns whether it was running.

    mode is pg_ctl's: "smart" waits for the clients to disconnect, "fast" (the default)
    disconnects them, "immediate" quits without a checkpoint, so the next start recovers.
    With purge, the instance's directory (data, log, settings) is deleted as well.
    """
    if mode not in STOP_MODES:
        raise PostgresToolError(f"--mode must be one of {', '.join(STOP_MODES)}")
    paths = _instance_paths(name, var_dir)
    if not paths.root.exists():
        return False
    with _locked(paths.lock):
        pid = _running_pid(paths)
        if pid is not None:
            _log.info("stopping instance %r (pid %d, %s)", name, pid, mode)
            bin_dir = _bin_dir_for(paths)
            command = [
                _tool(bin_dir, "pg_ctl"),
                "stop",
                "-D",
                str(paths.data),
                "-m",
                mode,
                "-w",
                "-t",
                str(max(1, math.ceil(timeout))),
                "-s",
            ]
            result = _run(
                _as_server(_server_account(), command), timeout=timeout + 30, cwd=paths.root
            )
            if result.returncode != 0:
                raise PostgresToolError(
                    f"pg_ctl stop failed (exit {result.returncode}): {_output(result)}\n"
                    f"--- tail of {paths.log} ---\n{_tail(paths.log)}"
                )
            if _wait_processes_gone(paths, KILL_TIMEOUT_S):
                raise PostgresToolError(f"processes of instance {name!r} outlived its stop")
        if purge:
            shutil.rmtree(paths.root)
            _log.info("deleted %s", paths.root)
    return pid is not None


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def kill(name: str, *, var_dir: Path | None = None) -> bool:
    """SIGKILL the server and all its processes, as a crash would; returns whether it ran.

    The next start runs crash recovery. The pid file stays, as after a real crash; start
    removes it once it has checked that no process of the dead server is left.
    """
    paths = _instance_paths(name, var_dir)
    if not paths.root.exists():
        return False
    with _locked(paths.lock):
        pid = _running_pid(paths)
        if pid is None:
            return False
        _log.info("killing instance %r (pid %d)", name, pid)
        # The postmaster first: killed before it, a child's death would make it reset the
        # server (crash recovery) instead of dying with it. Then its children, found by
        # parent before and by data directory after (catching any it forked meanwhile).
        children = _children(pid)
        _sigkill(pid)
        for target in {*children, *_server_processes(paths)}:
            _sigkill(target)
        alive = _wait_processes_gone(paths, KILL_TIMEOUT_S)
        if alive or _running_pid(paths) is not None:
            raise PostgresToolError(f"processes {alive or [pid]} survived SIGKILL")
    return True


def restart(
    name: str = DEFAULT_NAME, *, var_dir: Path | None = None, timeout: float = START_TIMEOUT_S
) -> str:
    """Stop (fast) if running, then start with the port and settings of the last start."""
    paths = _instance_paths(name, var_dir)
    settings = _load_settings(paths)
    if settings is None:
        raise PostgresToolError(f"no instance {name!r} under {paths.root.parent}")
    stop(name, var_dir=var_dir, mode="fast", timeout=timeout)
    return start(
        name,
        settings.port,
        unsafe_fast=settings.unsafe_fast,
        var_dir=var_dir,
        timeout=timeout,
    )


def status(name: str = DEFAULT_NAME, *, var_dir: Path | None = None) -> InstanceStatus:
    """Whether instance `name` runs (pid checked) and accepts connections."""
    paths = _instance_paths(name, var_dir)
    settings = _load_settings(paths)
    if settings is None:
        raise PostgresToolError(f"no instance {name!r} under {paths.root.parent}")
    pid = _running_pid(paths)
    port = (_running_port(paths) if pid is not None else None) or settings.port
    answering = False
    if pid is not None:
        bin_dir = _newest_bin_dir()
        answering = bin_dir is not None and _port_answers(bin_dir, port)
    return InstanceStatus(name=name, data_dir=paths.data, port=port, pid=pid, answering=answering)


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--var-dir",
        type=Path,
        help=f"state directory (default: ${VAR_DIR_ENV} or var/ at the repository root)",
    )
    named = argparse.ArgumentParser(add_help=False, parents=[common])
    named.add_argument("--name", default=DEFAULT_NAME, help="instance name (default: local)")

    parser = argparse.ArgumentParser(
        prog="local_postgres.py", description="Local PostgreSQL servers for crmsync."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "ensure", parents=[common], help="install the server binaries if missing; print their dir"
    )
    start_cmd = commands.add_parser("start", parents=[named], help="start an instance")
    start_cmd.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    start_cmd.add_argument(
        "--unsafe-fast",
        action="store_true",
        help="fsync, synchronous_commit and full_page_writes off (throwaway data only)",
    )
    start_cmd.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds")
    stop_cmd = commands.add_parser("stop", parents=[named], help="stop an instance")
    stop_cmd.add_argument("--mode", choices=STOP_MODES, default="fast", help="pg_ctl stop mode")
    stop_cmd.add_argument("--purge", action="store_true", help="also delete the instance's data")
    stop_cmd.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds")
    restart_cmd = commands.add_parser("restart", parents=[named], help="stop, then start again")
    restart_cmd.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds")
    kill_cmd = commands.add_parser("kill", parents=[common], help="kill -9 an instance")
    kill_cmd.add_argument("--name", required=True, help="instance name")
    commands.add_parser("status", parents=[named], help="show an instance; exit 3 unless up")
    return parser


def _run_command(args: argparse.Namespace) -> int:
    var_dir: Path | None = args.var_dir
    if args.command == "ensure":
        print(ensure_binaries())
    elif args.command == "start":
        print(
            start(
                args.name,
                args.port,
                unsafe_fast=args.unsafe_fast,
                var_dir=var_dir,
                timeout=args.timeout,
            )
        )
    elif args.command == "stop":
        stop(args.name, var_dir=var_dir, mode=args.mode, purge=args.purge, timeout=args.timeout)
    elif args.command == "restart":
        print(restart(args.name, var_dir=var_dir, timeout=args.timeout))
    elif args.command == "kill":
        kill(args.name, var_dir=var_dir)
    elif args.command == "status":
        instance = status(args.name, var_dir=var_dir)
        pid = str(instance.pid) if instance.pid is not None else "-"
        print(f"instance {instance.name}  {instance.state:<8}  pid {pid}  {instance.dsn}")
        print(f"  data {instance.data_dir}")
        return 0 if instance.state == "up" else STATUS_NOT_RUNNING
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="local_postgres: %(message)s", stream=sys.stderr)
    try:
        return _run_command(args)
    except PostgresToolError as error:
        print(f"local_postgres: error: {error}", file=sys.stderr)
        # `status` of an instance that does not exist means "not running", not "broken".
        return STATUS_NOT_RUNNING if args.command == "status" else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
