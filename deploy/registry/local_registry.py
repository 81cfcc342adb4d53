"""A local Schema Registry for tests and trials: Apicurio Registry, whose
``/apis/ccompat/v7`` API is the Confluent Schema Registry API.

Confluent's own registry is not published on Maven Central; Apicurio Registry is
(``io.apicurio:apicurio-registry-app``, its ``all`` distribution), and 3.0.9 is the
newest that runs on Java 17. It keeps its schemas in memory here (they are gone when
it stops), which is what a test wants.

    python deploy/registry/local_registry.py fetch
    python deploy/registry/local_registry.py start --port 18081   # prints the API URL
    python deploy/registry/local_registry.py stop
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

VERSION: Final = "3.0.9"
ARTIFACT: Final = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
RUNNER: Final = f"apicurio-registry-app-{VERSION}-runner.jar"
ROOT: Final = Path(__file__).resolve().parents[2]
MAVEN_TIMEOUT_S: Final = 900
START_TIMEOUT_S: Final = 120.0
API: Final = "/apis/ccompat/v7"


class RegistryToolError(RuntimeError):
    pass


def registry_dir(var_dir: Path | None = None) -> Path:
    return (var_dir or ROOT / "var") / "registry"


def fetch(var_dir: Path | None = None) -> Path:
    """Unpack the registry into <var>/registry/<version> unless it is there; its dir."""
    home = registry_dir(var_dir) / VERSION
    if (home / RUNNER).is_file():
        return home
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RegistryToolError("Maven (mvn) is not on PATH; it fetches the registry")
    download = registry_dir(var_dir) / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    command = [
        mvn,
        "-q",
        "-B",
        "dependency:copy",
        f"-Dartifact={ARTIFACT}",
        f"-DoutputDirectory={download}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False
    )
    archives = list(download.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        output = (result.stdout + result.stderr).strip()
        raise RegistryToolError(f"Maven failed (exit {result.returncode}):\n{output}")
    partial = home.with_name(f"{VERSION}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archives[0]) as archive:
        archive.extractall(partial, filter="data")
    if not (partial / RUNNER).is_file():
        raise RegistryToolError(f"{archives[0].name} holds no {RUNNER}")
    partial.rename(home)
    shutil.rmtree(download, ignore_errors=True)
    return home


def _pid_file(var_dir: Path | None) -> Path:
    return registry_dir(var_dir) / "registry.pid"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start(*, port: int, var_dir: Path | None = None) -> str:
    """Start the registry on 127.0.0.1:``port`` (its management port is ``port`` + 1)
    and wait until it answers; returns its Confluent-compatible API URL."""
    home = fetch(var_dir)
    url = f"http://127.0.0.1:{port}{API}"
    if answers(url):
        raise RegistryToolError(f"something already answers at {url}")
    log = registry_dir(var_dir) / "registry.log"
    env = {
        **os.environ,
        "QUARKUS_HTTP_HOST": "127.0.0.1",
        "QUARKUS_HTTP_PORT": str(port),
        "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
        "QUARKUS_MANAGEMENT_PORT": str(port + 1),
        # Confluent's registry checks new versions BACKWARD by default; Apicurio's
        # default is no check at all.
        "APICURIO_RULES_GLOBAL_COMPATIBILITY": "BACKWARD",
    }
    java = shutil.which("java") or "java"
    command = [java, "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-jar", str(home / RUNNER)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pid_file(var_dir).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(url):
        if process.poll() is not None:
            raise RegistryToolError(f"the registry exited with {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            stop(var_dir)
            raise RegistryToolError(f"the registry did not answer within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
    return url


def stop(var_dir: Path | None = None) -> None:
    pid_file = _pid_file(var_dir)
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "start", "stop"])
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--var-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch(args.var_dir))
        elif args.command == "start":
            print(start(port=args.port, var_dir=args.var_dir))
        else:
            stop(args.var_dir)
    except RegistryToolError as exc:
        print(f"local_registry: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
