"""The writer's list of crash points names every crash point its code passes, so a
fault suite iterating over the list misses none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.writer import loop

pytestmark = pytest.mark.unit

WRITER = Path(loop.__file__).parent


def crash_points_in_code() -> set[str]:
    """The names passed to crash_point() anywhere under services/writer, as literals or
    as constants of loop.py."""
    names: set[str] = set()
    for module in WRITER.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "crash_point"
            ):
                continue
            [argument] = node.args
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
            elif isinstance(argument, ast.Name):
                names.add(getattr(loop, argument.id))
            else:
                raise AssertionError(f"{module}: a crash point named by an expression")
    return names


def test_the_crash_point_list_names_every_crash_point_of_the_writer() -> None:
    assert crash_points_in_code() == set(loop.CRASH_POINTS)
    assert len(loop.CRASH_POINTS) == len(set(loop.CRASH_POINTS))
    assert loop.CRASH_POINTS == (
        "writer-before-store-commit",
        "writer-after-store-commit",
        "writer-after-offset-commit",
        "writer-after-relay-produce",
    )
