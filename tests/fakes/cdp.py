"""A fake CDP that follows docs/cdp-http-api.md, for the HTTP store's tests.

It is configured, as a real CDP would be, with the conflict and identity policies
(crmsync's ProfileSettings) and keeps its profiles in memory, applying each change
with the same profile model the SQL stores use. Idempotency keys are remembered with
their answers; a repeated key is answered from that ledger without applying again.
Faults (429 with Retry-After, 5xx) come from tests.fakes.server.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.core.contracts import Identity, ProfileUpdate, UpdateOperation
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from services.writer.identity_claims import Claims, IdentityRules, crm_identity
from services.writer.profiles import (
    ConflictRules,
    Merge,
    Outcome,
    Profile,
    ProfileBook,
    Version,
    identities_of,
    update_problem,
)
from services.writer.stores.base import stored_profile
from services.writer.stores.cdp_wire import WireError, change_from_json, profile_json
from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

TOKEN = "cdp-token-1"
MAX_BATCH = 500


class FakeCdp:
    def __init__(self, profile: ProfileSettings | None = None) -> None:
        self.settings = profile or ProfileSettings()
        self.profiles: dict[int, Profile] = {}
        self.owner: dict[Identity, int] = {}
        self.tombstones: dict[str, int] = {}
        self.detached: dict[str, Version] = {}
        self.claims = Claims()
        self.merges: dict[int, Merge] = {}
        self.apart: dict[int, set[int]] = {}
        self.ledger: dict[str, tuple[int, dict[str, Any]]] = {}
        self.applied = 0
        self._ids = itertools.count(1)

    def apply(self, key: str, body: Any) -> tuple[int, dict[str, Any]]:
        """One change, answered as the single endpoint does."""
        if key in self.ledger:
            status, answer = self.ledger[key]
            return status, {**answer, "replayed": True}
        answer = self._apply(body)
        if answer[0] < 500:
            self.ledger[key] = answer
        return answer

    def _apply(self, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            update = change_from_json(body)
        except WireError as exc:
            return 400, {"error": str(exc)}
        problem = update_problem(update)
        if problem is not None:
            return 422, {"error": problem}
        book = self._book([update])
        result = book.apply(update)
        if result.outcome is Outcome.REJECTED:
            return 409, {"error": result.reason, "profile_ids": _ids_in(result.reason)}
        self._keep(book)
        self.applied += 1
        return 200, {
            "status": "unchanged" if result.outcome is Outcome.UNCHANGED else result.outcome.value,
            "profile_id": result.profile_id,
            "merges": [
                {"merged_profile_id": m.merged_id, "into_profile_id": m.into_id}
                for m in result.merges
            ],
            "drops": [{"field": name, "reason": why} for name, why in result.drops],
            "reason": result.reason,
        }

    def _book(self, updates: list[ProfileUpdate]) -> ProfileBook:
        asked = {i for u in updates for i in identities_of(u)}
        asked |= {crm_identity((u.source, u.record_id)) for u in updates}
        touched = {self.owner[i] for i in asked if i in self.owner}
        holders = {
            identity: [p.id for p in self.profiles.values() if identity in p.retired]
            for identity in asked
        }
        touched |= {profile_id for ids in holders.values() for profile_id in ids}
        if any(u.operation is UpdateOperation.SPLIT for u in updates):
            touched = set(self.profiles)  # a split reaches the merge's records: all, here
        return ProfileBook(
            profiles=[self.profiles[pid] for pid in touched],
            tombstones=self.tombstones,
            detached=self.detached,
            rules=ConflictRules(self.settings),
            on_identity_conflict=self.settings.on_identity_conflict,
            next_id=lambda: next(self._ids),
            now=to_micros(datetime.now(UTC)),
            claims=self.claims,
            identity_rules=IdentityRules(self.settings.identities),
            retired_holders=holders,
            merges=self.merges,
            separations=self.apart,
        )

    def _keep(self, book: ProfileBook) -> None:
        changes = book.changes
        for profile_id in changes.removed_profiles:
            self.profiles.pop(profile_id, None)
        self.profiles.update(changes.profiles)
        for identity, owner in changes.identities.items():
            if owner is None:
                self.owner.pop(identity, None)
            else:
                self.owner[identity] = owner
        self.tombstones.update(changes.tombstones)
        self.merges.update((merge.merged_id, merge) for merge in changes.merges)
        for one, other in changes.separations:
            self.apart.setdefault(one, set()).add(other)
            self.apart.setdefault(other, set()).add(one)
        self.detached.update(changes.detached)

    def find(self, identity: Identity) -> Profile | None:
        owner = self.owner.get(identity)
        return None if owner is None else self.profiles[owner]


def _ids_in(reason: str) -> list[int]:
    return [int(word) for word in reason.replace(";", " ").split() if word.isdigit()]


def build_app(cdp: FakeCdp) -> web.Application:
    def authorised(request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(
                text='{"error": "bad token"}', content_type="application/json"
            )

    async def upsert(request: web.Request) -> web.Response:
        authorised(request)
        key = request.headers.get("Idempotency-Key")
        if not key:
            return web.json_response({"error": "Idempotency-Key header required"}, status=400)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        status, answer = cdp.apply(key, body)
        headers = {"Idempotent-Replayed": "true"} if answer.get("replayed") else {}
        return web.json_response(answer, status=status, headers=headers)

    async def batch(request: web.Request) -> web.Response:
        authorised(request)
        try:
            items = (await request.json())["changes"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "body is not {changes: [...]}"}, status=400)
        if len(items) > MAX_BATCH:
            return web.json_response({"error": f"at most {MAX_BATCH} changes"}, status=413)
        results = []
        for item in items:
            key = item.get("idempotency_key") if isinstance(item, dict) else None
            if not key:
                status, answer = 400, {"error": "idempotency_key required"}
            else:
                status, answer = cdp.apply(key, item.get("change"))
            results.append({"idempotency_key": key, "status": status, "body": answer})
        return web.json_response({"results": results})

    async def profiles(request: web.Request) -> web.Response:
        authorised(request)
        identity = request.query.get("identity")
        if identity is not None:
            kind, _, value = identity.partition(":")
            found = cdp.find(Identity(kind, value))
            if found is None:
                return web.json_response({"error": "no such profile"}, status=404)
            return web.json_response(profile_json(stored_profile(found)))
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "100")), 500)
        ids = sorted(pid for pid in cdp.profiles if pid > after)
        page = ids[:limit]
        return web.json_response(
            {
                "profiles": [profile_json(stored_profile(cdp.profiles[pid])) for pid in page],
                "next_after": page[-1] if len(ids) > limit else None,
            }
        )

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/v1/profiles/upsert", upsert)
    app.router.add_post("/v1/profiles/batch", batch)
    app.router.add_get("/v1/profiles", profiles)
    return app


def server(cdp: FakeCdp, faults: Faults | None = None) -> FakeServer:
    return FakeServer(build_app(cdp), faults)


def main() -> None:
    args = standalone_arguments("fake CDP profile API").parse_args()
    faults = Faults(
        max_requests_per_second=args.rate_limit, error_rate=args.error_rate, seed=args.seed
    )
    run_standalone(server(FakeCdp(), faults), args.port)


if __name__ == "__main__":
    main()
