"""CSV import benchmark: a CRM export of N rows imported as a full sync.

Writes an export file of N contacts (realistic columns), then runs
``crmsync import csv`` as its own process against a real broker and reports rows/s
and the importer's peak resident memory (it streams, so memory should not grow
with the file).

Usage: python bench/csv_import.py [--rows N]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO_ROOT, bench_broker, write_results
from tests.support.services import SECRETS_ENV, Stack

COLUMNS = ["id", "email", "first_name", "last_name", "phone", "company", "city", "updated_at"]


def write_export(path: Path, rows: int) -> int:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(rows):
            writer.writerow(
                [
                    i,
                    f"person{i}@example.com",
                    "Ada",
                    "Lovelace",
                    "+44 20 7946 0958",
                    "Analytical Engines Ltd",
                    "London",
                    "2026-11-23T09:00:00Z",
                ]
            )
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir))
        stack.config["sources"]["demo"]["csv"] = {"modified_at_column": "updated_at"}
        stack.write_config()
        export = Path(workdir) / "export.csv"
        size = write_export(export, args.rows)
        started = time.perf_counter()
        importer = subprocess.Popen(
            [
                *(sys.executable, "-m", "services.cli", "--config", str(stack.config_path)),
                *("import", "csv", "demo", str(export)),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **SECRETS_ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert importer.stdout is not None
        output = importer.stdout.read()
        # wait4 gives this one process's peak resident memory, nobody else's.
        _pid, status, usage = os.wait4(importer.pid, 0)
        importer.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        if importer.returncode != 0:
            raise SystemExit(f"import failed:\n{output}")
        summary = output.strip().splitlines()[-1]
    write_results(
        "csv_import",
        {
            "rows": args.rows,
            "file_mb": round(size / 1e6, 1),
            "seconds": round(elapsed, 1),
            "rows_per_s": round(args.rows / elapsed),
            "importer_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "importer_said": summary,
        },
    )


if __name__ == "__main__":
    main()
