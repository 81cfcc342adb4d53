"""deploy/apt_package.py, the apt-get installs of the deploy scripts, where no install runs.

The install itself is exercised by the tools that need it (PostgreSQL's server, promtool)
on a machine that lacks them; here, the paths that must not reach apt-get, or find none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.promtool import apt_package

pytestmark = pytest.mark.unit


@pytest.fixture
def no_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without apt-get (nor anything else)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("apt-get") is None


def test_a_tool_that_is_there_needs_no_apt_get(no_apt_get: None) -> None:
    present = Path("/bin/sh")
    assert apt_package().ensure_executable(present, package="dash") == present


def test_a_missing_tool_names_the_package_to_install(no_apt_get: None, tmp_path: Path) -> None:
    missing = tmp_path / "promtool"
    error = apt_package().AptError
    with pytest.raises(error, match=r"install Debian's prometheus package") as caught:
        apt_package().ensure_executable(missing, package="prometheus")
    assert str(missing) in str(caught.value)


def test_install_without_apt_get_says_so(no_apt_get: None) -> None:
    with pytest.raises(apt_package().AptUnavailable, match="no apt-get"):
        apt_package().install("prometheus")


def test_a_file_that_is_not_executable_is_missing(no_apt_get: None, tmp_path: Path) -> None:
    plain = tmp_path / "promtool"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    if os.access(plain, os.X_OK):
        pytest.fail("root sees a 0644 file as executable here; the check below means nothing")
    with pytest.raises(apt_package().AptError):
        apt_package().ensure_executable(plain, package="prometheus")
