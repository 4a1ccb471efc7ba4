"""Intake's own database: reports (one per idempotency key), quarantine, contact audit, directory.

`reports._id` is `<channel>:<external_id>`, so MongoDB's unique `_id` makes one case per key
even with replicas racing. One secondary index only, `case_id` (assignment, closure, contact
look-up): every index costs each insert on the hot path. Duplicate linking reads `links`, one
small document per place and category (`_id` = the link key) holding its latest cases, so it
is found by `_id` and written only for reports that name a place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.db import Indexes

from .domain import DirectoryView, OpenCase

REPORTS = "reports"
LINKS = "links"
LINKS_KEPT = 20  # latest cases per place and category; older ones are past the window anyway
QUARANTINE = "quarantine"
AUDIT = "contact_audit"
DIRECTORY = "directory"
DIRECTORY_ID = "current"


class IntakeStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.reports = db[REPORTS]
        self.links = db[LINKS]
        self.quarantine = db[QUARANTINE]
        self.audit = db[AUDIT]
        self.directory = db[DIRECTORY]

    @staticmethod
    def declare(indexes: Indexes) -> None:
        indexes.add(
            REPORTS,
            IndexModel([("case_id", ASCENDING)], unique=True, name="case_id"),
        )

    # ---- reports --------------------------------------------------------------------------
    async def existing(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Report key → `{case_id, envelope_id}` for the keys already stored."""
        if not keys:
            return {}
        cursor = self.reports.find({"_id": {"$in": list(keys)}}, {"case_id": 1, "envelope_id": 1})
        return {d["_id"]: d async for d in cursor}

    async def open_cases(self, link_keys: Iterable[str], since: datetime) -> dict[str, list[OpenCase]]:
        """Link key → the cases of that place and category received since `since` and still open."""
        keys = sorted(set(link_keys))
        if not keys:
            return {}
        recent: dict[str, list[OpenCase]] = {}
        async for d in self.links.find({"_id": {"$in": keys}}):
            cases = [OpenCase(c["case_id"], c["at"]) for c in d.get("cases", ())]
            recent[d["_id"]] = [c for c in cases if c.received_at >= since]
        ids = [c.case_id for cs in recent.values() for c in cs]
        if not ids:
            return {}
        still_open = {d["case_id"] async for d in self.reports.find({"case_id": {"$in": ids}, "open": True}, {"case_id": 1})}
        return {k: kept for k, cs in recent.items() if (kept := [c for c in cs if c.case_id in still_open])}

    async def insert_reports(self, docs: Sequence[dict[str, Any]], session: AsyncClientSession) -> None:
        """The reports, and each under its place and category for linking (one transaction)."""
        await self.reports.insert_many(list(docs), ordered=False, session=session)
        linked: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            if d.get("link_key"):
                linked.setdefault(d["link_key"], []).append({"case_id": d["case_id"], "at": d["received_at"]})
        if linked:
            await self.links.bulk_write(
                [
                    UpdateOne({"_id": k}, {"$push": {"cases": {"$each": cases, "$slice": -LINKS_KEPT}}}, upsert=True)
                    for k, cases in linked.items()
                ],
                ordered=False,
                session=session,
            )

    async def by_case(self, case_id: str) -> dict[str, Any] | None:
        return await self.reports.find_one({"case_id": case_id})

    @staticmethod
    def assign_op(case_id: str, version: int, assignee: str | None, scope: dict[str, Any], report_id: str | None = None) -> UpdateOne:
        """Keep the newest assignment only (events may arrive out of order or twice).
        With the report's `_id` known the update is an `_id` lookup, else by the case id index."""
        update: dict[str, Any] = {"assignee": assignee, "assigned_version": version}
        for part in ("district", "community", "grid"):
            if scope.get(part):
                update[part] = scope[part]
        return UpdateOne({**_by(case_id, report_id), "assigned_version": {"$lt": version}}, {"$set": update})

    @staticmethod
    def close_op(case_id: str, version: int, report_id: str | None = None) -> UpdateOne:
        return UpdateOne({**_by(case_id, report_id), "open": True}, {"$set": {"open": False, "closed_version": version}})

    async def apply(self, ops: list[UpdateOne]) -> None:
        """Assignments and closures of many cases in one batched write."""
        if ops:
            await self.reports.bulk_write(ops, ordered=False)

    # ---- quarantine ------------------------------------------------------------------------
    async def put_quarantine(self, doc: dict[str, Any], session: AsyncClientSession) -> None:
        await self.quarantine.insert_one(doc, session=session)

    async def get_quarantine(self, qid: str) -> dict[str, Any] | None:
        return await self.quarantine.find_one({"_id": qid})

    # ---- contact audit ---------------------------------------------------------------------
    async def record_audit(self, entry: dict[str, Any]) -> bool:
        """False when this request (same command id) was audited already."""
        try:
            await self.audit.insert_one(entry)
            return True
        except DuplicateKeyError:
            return False

    # ---- directory -------------------------------------------------------------------------
    async def save_directory(self, view: DirectoryView) -> None:
        """Newest version wins; an older or repeated announcement changes nothing."""
        doc = {"_id": DIRECTORY_ID, **view.to_doc()}
        result = await self.directory.replace_one({"_id": DIRECTORY_ID, "version": {"$lt": view.version}}, doc)
        if result.matched_count == 0:
            try:
                await self.directory.insert_one(doc)
            except DuplicateKeyError:
                pass  # a newer (or the same) version is stored

    async def load_directory(self) -> DirectoryView:
        return DirectoryView.from_doc(await self.directory.find_one({"_id": DIRECTORY_ID}))


def _by(case_id: str, report_id: str | None) -> dict[str, Any]:
    return {"_id": report_id, "case_id": case_id} if report_id else {"case_id": case_id}
