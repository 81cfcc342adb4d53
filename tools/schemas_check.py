"""``python -m tools.schemas_check``: fail when a schema change breaks a reader.

Reads every ``schemas/*.avsc`` in the working tree (uncommitted edits included) and,
from git history, every earlier committed version of each file, following renames.
Each working-tree schema must parse with fastavro and be fully compatible with each
distinct earlier version (``schema_compat.full_incompatibilities``): new readers read
old data and old readers read new data, so producers and consumers can be upgraded in
any order. A schema file present at HEAD but gone from the working tree also fails:
readers may still receive data written with it.

Prints one line per problem and a summary line to stdout; exits 1 when there is any
problem, 0 when there is none, 2 on bad usage. ``--against REV`` compares with that
revision only instead of the whole history.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fastavro
from fastavro.schema import SchemaParseException

from tools.schema_compat import SchemaError, full_incompatibilities, incompatibilities

SCHEMA_GLOB = "*.avsc"

# What reading and parsing a schema raises when the text is not a valid schema
# (JSONDecodeError and SchemaError are ValueErrors; fastavro raises the others).
SCHEMA_ERRORS = (ValueError, TypeError, KeyError, SchemaParseException)


@dataclass(frozen=True)
class Problem:
    """One line of the report."""

    file: str
    reason: str
    commit: str = ""
    direction: str = ""
    path: str = ""

    def render(self) -> str:
        where = f"{self.file}@{self.commit}" if self.commit else self.file
        direction = f" [{self.direction}]" if self.direction else ""
        path = f" {self.path}" if self.path else ""
        return f"{where}{direction}{path}: {self.reason}"


@dataclass(frozen=True)
class Version:
    """A schema file's content as committed at one revision."""

    commit: str
    schema: object


@dataclass(frozen=True)
class Report:
    problems: list[Problem]
    files: int
    versions: int


class Git:
    """The few git commands the check needs, run at the top of one repository."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # quotePath off: paths come back as written, not octal-escaped.
        return subprocess.run(
            ["git", "-c", "core.quotePath=false", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            encoding="utf-8",
            check=False,
        )

    def commit_of(self, rev: str) -> str | None:
        """Full sha of ``rev``, or None when it does not exist (e.g. HEAD before any commit)."""
        done = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        return done.stdout.strip() if done.returncode == 0 else None

    def short(self, sha: str) -> str:
        done = self.run("rev-parse", "--short", sha)
        return done.stdout.strip() if done.returncode == 0 else sha[:7]

    def history(self, path: str) -> Iterator[tuple[str, str]]:
        """(commit, path at that commit) for each commit that changed ``path``, newest first.

        ``--follow`` crosses renames, so the path can differ per commit; commits that
        deleted the file are left out because there is nothing to read at them.
        """
        done = self.run(
            "log", "--follow", "--diff-filter=d", "--name-only", "--format=%x00%H", "--", path
        )
        if done.returncode != 0:
            return
        commit = ""
        for line in done.stdout.splitlines():
            if line.startswith("\0"):
                commit = line[1:]
            elif line and commit:
                yield commit, line
                # A commit lists one name for a followed file; ignore any more.
                commit = ""

    def show(self, commit: str, path: str) -> str | None:
        done = self.run("show", f"{commit}:{path}")
        return done.stdout if done.returncode == 0 else None

    def files_at(self, commit: str, directory: str) -> list[str]:
        prefix = "" if directory in ("", ".") else f"{directory}/"
        done = self.run("ls-tree", "--name-only", commit, "--", prefix or ".")
        if done.returncode != 0:
            return []
        return sorted(
            name
            for name in done.stdout.splitlines()
            if name.endswith(".avsc") and "/" not in name.removeprefix(prefix)
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    directory = Path(args.schemas_dir) if args.schemas_dir else _toplevel(Path.cwd()) / "schemas"
    directory = directory.resolve()
    root = _toplevel(directory if directory.is_dir() else directory.parent)
    git = Git(root)
    baseline = git.commit_of(args.against or "HEAD")
    if args.against and baseline is None:
        sys.stderr.write(f"schemas-check: unknown revision {args.against!r}\n")
        raise SystemExit(2)
    if not directory.is_dir() and baseline is None:
        sys.stderr.write(f"schemas-check: no schemas directory at {directory}\n")
        raise SystemExit(2)
    report = check(git=git, directory=directory, baseline=baseline, only=bool(args.against))
    for problem in report.problems:
        sys.stdout.write(problem.render() + "\n")
    sys.stdout.write(_summary(report) + "\n")
    raise SystemExit(1 if report.problems else 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.schemas_check",
        description="Fail when a schema change would break readers of an earlier version.",
    )
    parser.add_argument(
        "--schemas-dir", help="directory of *.avsc files (default: schemas/ at the repository root)"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="compare only with the schemas at this revision (default: every earlier version)",
    )
    return parser


def _toplevel(start: Path) -> Path:
    """The git repository holding ``start``, or ``start`` itself outside any repository."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        # No git, or no such directory: there is no history to compare with.
        return start
    if done.returncode != 0:
        return start
    return Path(done.stdout.strip()).resolve()


def _summary(report: Report) -> str:
    checked = f"{report.files} schema file(s) against {report.versions} earlier version(s)"
    if report.problems:
        return f"schemas-check: {len(report.problems)} problem(s) checking {checked}"
    return f"schemas-check: OK, checked {checked}"


def check(*, git: Git, directory: Path, baseline: str | None, only: bool) -> Report:
    """Every problem with the schemas in ``directory``.

    ``baseline`` is the commit deletions are judged against (None before the first
    commit); with ``only`` it is also the single revision schemas are compared with.
    """
    relative_dir = _relative(directory, git.root)
    current = sorted(directory.glob(SCHEMA_GLOB)) if directory.is_dir() else []
    problems: list[Problem] = []
    versions = 0
    for file in current:
        name = _relative(file, git.root)
        schema, problem = _load_current(file, name)
        if problem is not None:
            problems.append(problem)
            continue
        earlier = _earlier_versions(git, path=name, baseline=baseline, only=only)
        versions += len(earlier)
        for version in earlier:
            problems.extend(_compare(git, file=name, version=version, schema=schema))
    if baseline is not None:
        present = {_relative(file, git.root) for file in current}
        problems.extend(_deleted(git, baseline=baseline, directory=relative_dir, present=present))
    return Report(problems=problems, files=len(current), versions=versions)


def _relative(path: Path, root: Path) -> str:
    """``path`` as git names it: relative to the repository root, with forward slashes."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        # Only outside the repository, where no git command will be asked about it.
        return path.as_posix()


def _load_current(file: Path, name: str) -> tuple[object, Problem | None]:
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
        _validate(schema)
    except (OSError, *SCHEMA_ERRORS) as exc:
        return None, Problem(file=name, reason=f"invalid schema: {type(exc).__name__}: {exc}")
    return schema, None


def _validate(schema: object) -> None:
    if not isinstance(schema, str | list | dict):
        raise SchemaError(f"not an Avro schema: {schema!r}")
    # parse_schema validates names, types and defaults the checker takes on trust;
    # resolving the schema against itself makes sure the checker can read it too.
    fastavro.parse_schema(schema)
    incompatibilities(reader=schema, writer=schema)


def _earlier_versions(git: Git, *, path: str, baseline: str | None, only: bool) -> list[Version]:
    """Distinct committed versions of ``path``, newest first; none before the first commit."""
    if baseline is None:
        return []
    candidates = [(baseline, path)] if only else list(git.history(path))
    versions: list[Version] = []
    seen: list[object] = []
    for commit, old_path in candidates:
        schema = _load_committed(git, commit=commit, path=old_path)
        # Reformatting or reverting produces equal versions; checking one is enough.
        if schema is None or schema in seen:
            continue
        seen.append(schema)
        versions.append(Version(commit=commit, schema=schema))
    return versions


def _load_committed(git: Git, *, commit: str, path: str) -> object | None:
    text = git.show(commit, path)
    if text is None:
        # Not in that revision (a new file when using --against): nothing to compare.
        return None
    try:
        schema: object = json.loads(text)
        _validate(schema)
    except SCHEMA_ERRORS as exc:
        # No data can have been written with a schema fastavro rejects, so an invalid
        # old version constrains nothing; say so rather than fail forever on history.
        sys.stderr.write(f"schemas-check: skipping invalid {path}@{git.short(commit)}: {exc}\n")
        return None
    return schema


def _compare(git: Git, *, file: str, version: Version, schema: object) -> list[Problem]:
    commit = git.short(version.commit)
    try:
        found = full_incompatibilities(version.schema, schema)
    except SchemaError as exc:
        return [Problem(file=file, commit=commit, reason=f"cannot compare: {exc}")]
    return [
        Problem(
            file=file,
            commit=commit,
            direction=str(problem.direction or ""),
            path=problem.path,
            reason=problem.reason,
        )
        for problem in found
    ]


def _deleted(git: Git, *, baseline: str, directory: str, present: set[str]) -> list[Problem]:
    commit = git.short(baseline)
    return [
        Problem(
            file=name,
            commit=commit,
            reason="schema file deleted or renamed away; readers may still receive data "
            "written with it",
        )
        for name in git.files_at(baseline, directory)
        if name not in present
    ]


if __name__ == "__main__":
    main()
