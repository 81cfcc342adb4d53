#!/usr/bin/env python3
"""Install a Debian package with apt-get, for the deploy scripts that need a system tool.

deploy/postgres/local_postgres.py installs PostgreSQL's server with it, and the alert
rule tests Prometheus's promtool (the prometheus package; see tests/support/promtool.py).
Like local_postgres.py, this file is stdlib-only (it runs before any virtualenv exists)
and is not part of a package: its users load it by path.

Installing a package takes these steps (`install`):

1. Find apt-get; without it, raise AptUnavailable so the caller can say what to install.
2. `apt-get install -y --no-install-recommends PACKAGE`, non-interactive, waiting up to
   APT_LOCK_TIMEOUT_S for the dpkg lock when another apt-get (say, a parallel CI job
   installing the same package) holds it.
3. When apt-get's package lists predate the package (or were never fetched), or name a
   version the mirror no longer has, run `apt-get update` and install again, once.
4. Any other failure, or a second one, raises AptError with apt-get's output.

Only root can install: `ensure_executable` installs a tool's package when the tool is
missing and we are root, and otherwise raises AptError saying what to install.

Usage (with --provides, only when that file is missing; it is then printed):

    apt_package.py install PACKAGE [--provides PATH]
    apt_package.py install prometheus --provides /usr/bin/promtool
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

APT_TIMEOUT_S = 900.0
# Another apt-get (say, a parallel CI job installing the same package) holds the dpkg lock.
APT_LOCK_TIMEOUT_S = 300
# What apt-get says when its package lists are old: they predate the package (or were
# never fetched), or name a version the mirror has since replaced.
APT_STALE_LISTS = (
    "Unable to locate package",
    "has no installation candidate",
    "Unable to fetch some archives",
)

_log = logging.getLogger("apt_package")


class AptError(Exception):
    """apt-get failed, or could not be run; the message says what to do."""


class AptUnavailable(AptError):
    """This machine has no apt-get (not Debian or a derivative)."""


def _apt_get(apt: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = [apt, "-q", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", *args]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise AptError(f"`apt-get {' '.join(args)}` took over {error.timeout}s") from None


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).strip()


def install(package: str) -> None:
    """Install `package` and what it depends on (not what it recommends); see the steps."""
    # Step 1
    apt = shutil.which("apt-get")
    if apt is None:
        raise AptUnavailable(f"no apt-get to install Debian's {package} package")
    # Step 2
    command = ("install", "-y", "--no-install-recommends", package)
    _log.info("installing %s with apt-get (once per machine)", package)
    result = _apt_get(apt, *command)
    # Step 3
    if result.returncode != 0 and any(marker in _output(result) for marker in APT_STALE_LISTS):
        _log.info("apt-get's package lists lack %s; running apt-get update", package)
        update = _apt_get(apt, "update")
        if update.returncode != 0:
            raise AptError(f"apt-get update failed (exit {update.returncode}):\n{_output(update)}")
        result = _apt_get(apt, *command)
    # Step 4
    if result.returncode != 0:
        raise AptError(
            f"apt-get install {package} failed (exit {result.returncode}):\n{_output(result)}"
        )


def ensure_executable(path: Path, *, package: str) -> Path:
    """`path`, installing `package` (which provides it) first when it is missing."""
    if os.access(path, os.X_OK):
        return path
    hint = f"install Debian's {package} package (sudo apt-get install --no-install-recommends "
    if os.geteuid() != 0:
        raise AptError(f"no {path}: {hint}{package}), or run this as root to have it installed")
    try:
        install(package)
    except AptUnavailable:
        raise AptError(f"no {path} and no apt-get to install it: {hint}{package})") from None
    if not os.access(path, os.X_OK):
        raise AptError(f"apt-get installed {package} but {path} is still missing")
    _log.info("installed %s, which provides %s", package, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="apt_package.py", description="Install a Debian package with apt-get."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install_cmd = commands.add_parser("install", help="install a package (root only)")
    install_cmd.add_argument("package")
    install_cmd.add_argument(
        "--provides", type=Path, help="install only when this file is missing; print it"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="apt_package: %(message)s", stream=sys.stderr)
    try:
        if args.provides is not None:
            print(ensure_executable(args.provides, package=args.package))
        else:
            install(args.package)
    except AptError as error:
        print(f"apt_package: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
