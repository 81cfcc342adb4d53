"""Full sync pull benchmark: every record of a fake CRM's API into the fullsync topic.

The fake CRM runs as its own process (serving N records, 100 per page by default,
the way the vendor pages them), ingest as another, against a real broker. The full
sync is started through the admin API and timed from STARTED to COMPLETED as ingest
reports it: records/s into Kafka (acknowledged, acks=all).

Usage: python bench/fullsync_pull.py [--crm hubspot|generic_rest] [--records N]
       [--page-size P]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, bench_broker, write_results
from tests.support.services import Stack


def start_fake(crm: str, records: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", f"tests.fakes.{crm}", "--records", str(records)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, json.loads(line)["url"]


def source_config(crm: str, url: str, page_size: int) -> dict[str, Any]:
    api = {"base_url": url, "max_requests_per_second": 1000, "token": {"env": "BENCH_TOKEN"}}
    if crm == "generic_rest":
        return {
            "kind": "generic_rest",
            "api": api,
            "path": "/v1/contacts",
            "since_param": "updated_since",
            "paging": {"kind": "cursor"},
            "total_path": "total",
            "poll": {"interval_seconds": 3600, "page_size": page_size, "enabled": False},
        }
    return {
        "kind": "hubspot",
        "api": api,
        "properties": ["email", "firstname", "lastname"],
        "mapping": {"email": "email", "firstname": "first_name"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crm", default="hubspot", choices=["hubspot", "generic_rest"])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()
    fake_module = importlib.import_module(f"tests.fakes.{args.crm}")
    os.environ["BENCH_TOKEN"] = fake_module.TOKEN
    fake, url = start_fake(args.crm, args.records)
    try:
        with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
            stack = Stack(
                bootstrap=bootstrap,
                workdir=Path(workdir),
                sources={"bench": source_config(args.crm, url, args.page_size)},
            )
            try:
                stack.start("ingest")
                ingest = stack["ingest"]
                code, _ = ingest.admin("POST", "/fullsync/bench")
                if code != 202:
                    raise SystemExit(f"full sync not started: {code}")
                while True:
                    time.sleep(0.5)
                    _, status = ingest.admin("GET", "/fullsync/bench")
                    if status["status"] != "RUNNING":
                        break
            finally:
                stack.stop()
    finally:
        fake.terminate()
        fake.wait()
    if status["status"] != "COMPLETED" or status["records_done"] != args.records:
        raise SystemExit(f"full sync ended {status}")
    seconds = (
        datetime.fromisoformat(status["finished_at"]) - datetime.fromisoformat(status["started_at"])
    ).total_seconds()
    write_results(
        "fullsync_pull",
        {
            "crm": args.crm,
            "records": args.records,
            "page_size": args.page_size,
            "seconds": round(seconds, 1),
            "records_per_s": round(args.records / seconds),
        },
    )


if __name__ == "__main__":
    main()
