"""Routing's MongoDB persistence: cases (one document per case, version-guarded) and the directory.

Hot paths use `_id` lookups and writes queued on the unit of work (sent with its events at
commit, see `UnitOfWork.write`), guarded by `rev` (`ReplaceOne({_id, rev})`, or one
`UpdateMany({_id: {$in}, rev})` for cases changed alike);
`rev` is the document revision every write checks and bumps, so two writers of one case
cannot both win.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import IndexModel, InsertOne, ReplaceOne

from shared.contract.directory import Directory
from shared.db import Indexes, by_ids, guarded_writes
from shared.outbox import UnitOfWork
from shared.timers import WAKE_INDEX

from .domain import ACTIVE, Case

CASES = "cases"
DIRECTORY = "directory"
CURRENT = "current"


class Store:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.cases = db[CASES]
        self.directory = db[DIRECTORY]

    @staticmethod
    def declare(indexes: Indexes) -> None:
        indexes.add(CASES, WAKE_INDEX, IndexModel([("state", ASCENDING)]))

    # ---- cases ------------------------------------------------------------------------
    async def get(self, case_id: str) -> Case | None:
        doc = await self.cases.find_one({"_id": case_id})
        return Case.from_doc(doc) if doc else None

    async def get_many(self, case_ids: Sequence[str]) -> dict[str, Case]:
        return {d["_id"]: Case.from_doc(d) for d in await by_ids(self.cases, case_ids)}

    def insert(self, cases: Sequence[Case], uow: UnitOfWork) -> None:
        uow.write(InsertOne(c.to_doc(), namespace=self.cases.full_name) for c in cases)

    def replace(self, case: Case, old_rev: int, uow: UnitOfWork) -> None:
        """Written at commit, guarded by `old_rev`: the unit of work fails with `Conflict` if the
        case moved on meanwhile."""
        uow.write([ReplaceOne({"_id": case.id, "rev": old_rev}, case.to_doc(), namespace=self.cases.full_name)], matched=1)

    def replace_many(self, pairs: Sequence[tuple[Case, Case]], uow: UnitOfWork) -> None:
        """Each (before, after) written at commit, guarded by `before.rev`: all or nothing — the
        unit of work fails with `Conflict` if any case moved on meanwhile."""
        changes = ((b.to_doc(), a.to_doc()) for b, a in pairs)
        uow.write(guarded_writes(changes, "rev", namespace=self.cases.full_name), matched=len(pairs))

    async def active_cases(self) -> AsyncIterator[dict[str, Any]]:
        """Open cases (for the in-memory workload and gauges at start), a few fields each."""
        projection = {"state": 1, "assignee": 1, "level": 1, "scope": 1, "overdue": 1}
        for state in ACTIVE:
            async for doc in self.cases.find({"state": state}, projection):
                yield doc

    # ---- directory ----------------------------------------------------------------------
    async def load_directory(self) -> tuple[Directory | None, int]:
        doc = await self.directory.find_one({"_id": CURRENT})
        if not doc:
            return None, 0
        return Directory.model_validate(doc["directory"]), int(doc["version"])

    async def directory_version(self) -> int:
        doc = await self.directory.find_one({"_id": CURRENT}, {"version": 1})
        return int(doc["version"]) if doc else 0

    async def save_directory(
        self, directory: Directory, version: int, old_version: int, session: AsyncClientSession
    ) -> bool:
        doc = {"_id": CURRENT, "version": version, "directory": directory.model_dump(mode="json")}
        if old_version == 0:
            await self.directory.insert_one(doc, session=session)
            return True
        res = await self.directory.replace_one({"_id": CURRENT, "version": old_version}, doc, session=session)
        return res.matched_count == 1
