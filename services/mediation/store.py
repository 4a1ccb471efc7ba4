"""The mediation database: dossiers, what is known of each case, the mediators' directory.

Every write is an `_id` lookup with a version guard (SecantusDB scans on `find_one_and_update`).
A batch of case events reads with `$in` and writes with `insert_many` / `bulk_write`; a guard
that does not match raises `Conflict` (the caller's transaction aborts and it tries again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ASCENDING, ReplaceOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.operations import IndexModel

from shared.db import Indexes, by_ids
from shared.errors import Conflict, only_duplicates
from shared.timers import WAKE_INDEX

from .domain import CaseFile, Dossier, Mediator, State

DOSSIERS = "dossiers"
CASES = "cases"
DIRECTORY = "directory"
DIRECTORY_ID = "current"


def declare(indexes: Indexes) -> None:
    indexes.add(
        DOSSIERS,
        WAKE_INDEX,
        IndexModel([("case_id", ASCENDING), ("state", ASCENDING)]),
        IndexModel([("mediator", ASCENDING), ("state", ASCENDING)]),
        IndexModel([("state", ASCENDING), ("community", ASCENDING)]),
    )


def to_doc(d: Dossier) -> dict[str, Any]:
    return {"_id": d.mediation_id, **d.model_dump()}


def from_doc(doc: dict[str, Any]) -> Dossier:
    return Dossier.model_validate(doc)


class Directory:
    """Mediators and community directors, from the newest `directory.changed`."""

    def __init__(self, doc: dict[str, Any] | None) -> None:
        doc = doc or {}
        self.version: int = doc.get("version", 0)
        self.mediators = [
            Mediator(m["id"], m["community"], frozenset(m.get("languages") or ()))
            for m in doc.get("mediators", [])
        ]
        self.directors: list[dict[str, str]] = doc.get("directors", [])

    def mediators_of(self, community: str | None) -> list[Mediator]:
        return [m for m in self.mediators if community and m.community == community]

    def directors_of(self, community: str | None) -> list[str]:
        return [d["id"] for d in self.directors if community and d["community"] == community]

    def communities_with_mediators(self) -> set[str]:
        return {m.community for m in self.mediators}


class Store:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.dossiers = db[DOSSIERS]
        self.cases = db[CASES]
        self.directory = db[DIRECTORY]

    # -- dossiers -------------------------------------------------------------------

    async def get(self, mediation_id: str) -> Dossier | None:
        doc = await self.dossiers.find_one({"_id": mediation_id})
        return from_doc(doc) if doc else None

    async def exists(self, mediation_id: str, session: AsyncClientSession | None = None) -> bool:
        return await self.dossiers.find_one({"_id": mediation_id}, {"_id": 1}, session=session) is not None

    async def open_for_case(self, case_id: str, session: AsyncClientSession | None = None) -> list[Dossier]:
        docs = await self.dossiers.find({"case_id": case_id, "state": State.open.value}, session=session).to_list()
        return [from_doc(d) for d in docs]

    async def missing_parties(self, case_id: str, session: AsyncClientSession | None = None) -> list[Dossier]:
        docs = await self.dossiers.find({"case_id": case_id, "parties_known": False}, session=session).to_list()
        return [from_doc(d) for d in docs]

    async def open_for_cases(self, case_ids: Sequence[str], session: AsyncClientSession) -> list[Dossier]:
        docs = await self.dossiers.find(
            {"case_id": {"$in": list(case_ids)}, "state": State.open.value}, session=session
        ).to_list()
        return [from_doc(d) for d in docs]

    async def missing_parties_of(self, case_ids: Sequence[str], session: AsyncClientSession) -> list[Dossier]:
        docs = await self.dossiers.find(
            {"case_id": {"$in": list(case_ids)}, "parties_known": False}, session=session
        ).to_list()
        return [from_doc(d) for d in docs]

    async def open_without_mediator(self, communities: Iterable[str]) -> list[Dossier]:
        docs = await self.dossiers.find(
            {"state": State.open.value, "mediator": None, "community": {"$in": list(communities)}}
        ).to_list()
        return [from_doc(d) for d in docs]

    async def load(self, mediators: Iterable[str]) -> dict[str, int]:
        """Open dossiers per mediator: one indexed query (a count per mediator costs SecantusDB
        ~100 ms each, and the choice runs for every dossier opened)."""
        out = dict.fromkeys(mediators, 0)
        if not out:
            return out
        cursor = self.dossiers.find({"mediator": {"$in": list(out)}, "state": State.open.value}, {"mediator": 1})
        async for d in cursor:
            out[d["mediator"]] += 1
        return out

    async def insert(self, d: Dossier, session: AsyncClientSession) -> None:
        await self.dossiers.insert_one(to_doc(d), session=session)

    async def insert_many(self, dossiers: Sequence[Dossier], session: AsyncClientSession) -> None:
        """New dossiers; `Conflict` when one exists already (its id is deterministic)."""
        if dossiers:
            await _insert_new(self.dossiers, [to_doc(d) for d in dossiers], session, "dossier")

    async def save_many(self, changes: Sequence[tuple[Dossier, int]], session: AsyncClientSession) -> None:
        """Version-guarded replaces `(dossier, expected version)` in one statement."""
        if not changes:
            return
        ops = [ReplaceOne({"_id": d.mediation_id, "version": v}, to_doc(d)) for d, v in changes]
        result = await self.dossiers.bulk_write(ops, ordered=False, session=session)
        if result.matched_count != len(ops):
            raise Conflict(f"{len(ops) - result.matched_count} of {len(ops)} dossiers changed meanwhile")

    async def save(self, d: Dossier, expected_version: int, session: AsyncClientSession | None = None) -> None:
        """Version-guarded replace; `Conflict` when someone else wrote first."""
        result = await self.dossiers.replace_one(
            {"_id": d.mediation_id, "version": expected_version}, to_doc(d), session=session
        )
        if result.matched_count != 1:
            raise Conflict(f"dossier {d.mediation_id} changed (expected version {expected_version})")

    async def set_wake(self, d: Dossier) -> None:
        """Move the timer of an unchanged dossier (no event): guarded by its version."""
        await self.dossiers.update_one(
            {"_id": d.mediation_id, "version": d.version}, {"$set": {"wake_at": d.wake_at}}
        )

    # -- cases ----------------------------------------------------------------------

    async def get_case(self, case_id: str, session: AsyncClientSession | None = None) -> CaseFile:
        doc = await self.cases.find_one({"_id": case_id}, session=session)
        return CaseFile.model_validate(doc) if doc else CaseFile(case_id=case_id)

    async def get_cases(self, case_ids: Sequence[str], session: AsyncClientSession) -> dict[str, CaseFile]:
        """Every case asked for: a new (empty) case file for those not stored yet."""
        stored = {d["_id"]: CaseFile.model_validate(d) for d in await by_ids(self.cases, case_ids, session=session)}
        return {cid: stored.get(cid) or CaseFile(case_id=cid) for cid in case_ids}

    async def save_case(self, cf: CaseFile, session: AsyncClientSession) -> None:
        """Guarded by `rev`: concurrent `received`/`assigned`/`closed` of one case serialise here."""
        await self.save_cases([cf], session)

    async def save_cases(self, files: Sequence[CaseFile], session: AsyncClientSession) -> None:
        """New case files inserted, known ones replaced guarded by `rev`; `Conflict` when any
        was created or changed by someone else since it was read."""
        new = [_case_doc(cf) for cf in files if cf.rev == 0]
        ops = [ReplaceOne({"_id": cf.case_id, "rev": cf.rev}, _case_doc(cf)) for cf in files if cf.rev != 0]
        if new:
            await _insert_new(self.cases, new, session, "case file")
        if ops:
            result = await self.cases.bulk_write(ops, ordered=False, session=session)
            if result.matched_count != len(ops):
                raise Conflict(f"{len(ops) - result.matched_count} of {len(ops)} case files changed concurrently")

    # -- directory ------------------------------------------------------------------

    async def get_directory(self) -> Directory:
        return Directory(await self.directory.find_one({"_id": DIRECTORY_ID}))

    async def save_directory(self, version: int, mediators: list[dict], directors: list[dict]) -> bool:
        """Keep the newest version only; False when a newer one is stored (a redelivered equal
        version is written again, so the work that follows it is redone idempotently)."""
        doc = {"_id": DIRECTORY_ID, "version": version, "mediators": mediators, "directors": directors}
        try:
            result = await self.directory.replace_one(
                {"_id": DIRECTORY_ID, "version": {"$lte": version}}, doc, upsert=True
            )
        except DuplicateKeyError:
            return False
        return result.matched_count == 1 or result.upserted_id is not None


async def _insert_new(collection: AsyncCollection, docs: list[dict[str, Any]], session: AsyncClientSession, what: str) -> None:
    """Insert documents that must not exist yet: a duplicate key is someone else's write."""
    try:
        await collection.insert_many(docs, ordered=False, session=session)
    except BulkWriteError as exc:
        if not only_duplicates(exc):
            raise
        raise Conflict(f"{what} created concurrently") from exc


def _case_doc(cf: CaseFile) -> dict[str, Any]:
    return {"_id": cf.case_id, **cf.model_dump(), "rev": cf.rev + 1}

