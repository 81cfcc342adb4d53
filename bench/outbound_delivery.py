"""Outbound benchmark: profile changes delivered per second to destination fakes that
answer each call after a realistic delay.

A Kafka broker (bench_broker), the real writer (SQLite store) and the real outbound
service. PROFILES new profiles go straight onto profile-updates; the writer commits
them and relays their ProfileChanged events; the outbound service delivers them to
one destination per run:

- ``webhook``: the Standard Webhooks receiver (tests/fakes/webhook_receiver.py),
  chunks of 100 changes, signed;
- ``cdp``: the fake of the product documents' CDP records API
  (tests/fakes/experiture.py), upsert-batch of 500 records with an Idempotency-Key;
- ``hubspot``: the fake HubSpot's contacts batch upsert, 100 contacts a request;
- ``pipedrive``: the fake Pipedrive's persons API, a profile at a time (a search by
  email, then a create), 8 profiles side by side; a tenth of the profiles, as a
  vendor without a batch endpoint takes ten times as long.

Each fake answers every call after ``--delay-ms`` (50 by default, a vendor API's
round trip). Timed: from the first update produced until the destination holds every
change. Reported per destination: changes/s, requests made, and the floor the delay
alone sets (requests x delay, one call at a time per destination).

Usage: python -m bench.outbound_delivery [--profiles N] [--delay-ms D]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import bench_broker, produce_all, write_results
from services.core.codecs import load_contracts
from tests.fakes import experiture, pipedrive, webhook_receiver
from tests.fakes.hubspot import TOKEN as HUBSPOT_TOKEN
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.server import FakeServer, Faults, ServerThread
from tests.stores.changes import update
from tests.support.services import Stack

CONTRACTS = load_contracts()
SECRET = "whsec_YmVuY2gtb3V0Ym91bmQ="


def updates(profiles: int) -> list[tuple[bytes, bytes]]:
    encode = CONTRACTS.profile_update.encode
    return [
        (
            one.key,
            encode(one),
        )
        for one in (
            update(
                "hubspot",
                str(i),
                t=1,
                email=f"person{i}@example.com",
                attributes={"first_name": f"P{i}", "city": "Oslo", "score": i},
            )
            for i in range(profiles)
        )
    ]


def run(
    bootstrap: str,
    messages: list[tuple[bytes, bytes]],
    *,
    destination: dict[str, Any],
    server: FakeServer,
    env: dict[str, str],
    delivered: Callable[[], int],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir))
        stack.config["destinations"] = {"bench": destination}
        stack.write_config()
        stack["outbound"].env.update(env)
        try:
            stack.start("writer", "outbound")
            requests_before = server.requests
            started = time.monotonic()
            produce_all(bootstrap, stack.topic("profile-updates"), messages)
            deadline = started + 1800
            while delivered() < len(messages):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not delivered:\n{stack['outbound'].log_tail()}")
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            stack.stop()
    requests = server.requests - requests_before
    return {
        "changes": len(messages),
        "seconds": round(elapsed, 2),
        "changes_per_s": round(len(messages) / elapsed),
        "requests": requests,
        "changes_per_request": round(len(messages) / requests, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--delay-ms", type=int, default=50)
    args = parser.parse_args()
    messages = updates(args.profiles)
    delay = args.delay_ms / 1000
    figures: dict[str, Any] = {"profiles": args.profiles, "delay_ms_per_call": args.delay_ms}
    with bench_broker() as bootstrap:
        receiver = webhook_receiver.Receiver(SECRET)
        with ServerThread(webhook_receiver.server(receiver, Faults(delay_seconds=delay))) as hook:
            figures["webhook"] = run(
                bootstrap,
                messages,
                destination={
                    "kind": "webhook",
                    "api": {"base_url": f"{hook.url}/hook", "max_requests_per_second": 1000},
                    "secret": {"env": "CRMSYNC_BENCH_HOOK_SECRET"},
                    "batch_size": 100,
                },
                server=hook,
                env={"CRMSYNC_BENCH_HOOK_SECRET": SECRET},
                delivered=lambda: len(receiver.changes()),
            )
        space = experiture.Workspace(
            fields={"email", "hubspot_contact_id", "first_name", "city", "score"},
            identity_keys={"email", "hubspot_contact_id"},
        )
        with ServerThread(experiture.server(space, Faults(delay_seconds=delay))) as cdp:
            figures["cdp"] = run(
                bootstrap,
                messages,
                destination={
                    "kind": "cdp",
                    "api": {
                        "base_url": f"{cdp.url}/public/v1",
                        "token": {"env": "CRMSYNC_BENCH_CDP_TOKEN"},
                        "max_requests_per_second": 1000,
                    },
                    "match_key": "email",
                    "identities": {"email": "email", "crm:hubspot": "hubspot_contact_id"},
                    "batch_size": 500,
                },
                server=cdp,
                env={"CRMSYNC_BENCH_CDP_TOKEN": experiture.TOKEN},
                delivered=lambda: space.upserts,
            )
        crm = FakeHubSpot()
        with ServerThread(FakeServer(crm.app(), Faults(delay_seconds=delay))) as hubspot:
            figures["hubspot"] = run(
                bootstrap,
                messages,
                destination={
                    "kind": "hubspot",
                    "api": {
                        "base_url": hubspot.url,
                        "token": {"env": "CRMSYNC_BENCH_HUBSPOT_TOKEN"},
                        "max_requests_per_second": 1000,
                    },
                    "attributes": {"first_name": "firstname", "city": "city"},
                },
                server=hubspot,
                env={"CRMSYNC_BENCH_HUBSPOT_TOKEN": HUBSPOT_TOKEN},
                delivered=lambda: len(crm.contacts),
            )
        persons = pipedrive.FakePipedrive()
        persons.reset_seconds = 0
        with ServerThread(FakeServer(persons.app(), Faults(delay_seconds=delay))) as pd:
            figures["pipedrive"] = run(
                bootstrap,
                messages[: max(1, len(messages) // 10)],
                destination={
                    "kind": "pipedrive",
                    "api": {
                        "base_url": pd.url,
                        "token": {"env": "CRMSYNC_BENCH_PIPEDRIVE_TOKEN"},
                        "max_requests_per_second": 1000,
                    },
                    "attributes": {"first_name": "name"},
                    "concurrency": 8,
                },
                server=pd,
                env={"CRMSYNC_BENCH_PIPEDRIVE_TOKEN": pipedrive.API_TOKEN},
                delivered=lambda: len(persons.persons),
            )
    for name in ("webhook", "cdp", "hubspot", "pipedrive"):
        result = figures[name]
        floor = result["requests"] * delay / (8 if name == "pipedrive" else 1)
        result["seconds_waiting_for_the_fake"] = round(floor, 2)
        print(
            f"{name}: {result['changes']} changes in {result['seconds']} s = "
            f"{result['changes_per_s']}/s, {result['requests']} requests "
            f"({result['changes_per_request']} changes each; {floor:.1f} s of it the fake's "
            f"{args.delay_ms} ms per call)"
        )
    write_results("outbound_delivery", figures)


if __name__ == "__main__":
    main()
