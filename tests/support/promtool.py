"""Prometheus's promtool for the alert rule tests, installed through deploy/apt_package.py.

promtool comes with Debian's prometheus package. As with the PostgreSQL server
(tests/support/postgres.py), the package is installed with apt-get when promtool is
missing and we are root; anyone else gets an error naming what to install. A promtool
already on PATH (say, from Prometheus's own release archive) is used as it is.

The script is imported from its path rather than run as a subprocess, so a failure
raises its own AptError, apt-get's output included, inside the test report.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = REPO_ROOT / "deploy" / "apt_package.py"
# Registered in sys.modules under this name, as local_postgres.py registers it.
MODULE_NAME: Final = "apt_package"
PACKAGE: Final = "prometheus"
PROMTOOL: Final = Path("/usr/bin/promtool")
RULES_DIR: Final = REPO_ROOT / "deploy" / "prometheus"
# promtool works on local files only; this bounds a wedged run, not a slow one.
RUN_TIMEOUT_S: Final = 120.0


@functools.cache
def apt_package() -> ModuleType:
    """deploy/apt_package.py as a module (deploy/ is not a package)."""
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE_NAME] = module
    return module


@functools.cache
def promtool() -> Path:
    """promtool's path: the one on PATH, else Debian's, installed when missing."""
    found = shutil.which("promtool")
    if found is not None:
        return Path(found)
    return Path(apt_package().ensure_executable(PROMTOOL, package=PACKAGE))


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """promtool with `args`, run in deploy/prometheus so file names are relative to it."""
    return subprocess.run(
        [str(promtool()), *args],
        capture_output=True,
        text=True,
        cwd=RULES_DIR,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
