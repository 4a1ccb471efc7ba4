"""Intake's own database: reports (one per idempotency key), cases, quarantine, contact audit,
directory.

`reports._id` is `<channel>:<external_id>`, so MongoDB's unique `_id` makes one case per key
even with replicas racing; the report holds the personal data (sealed). `cases._id` is the case
id: where the case is when it opens. What intake learns later (assignments, closure) is appended
to `case_changes`, one small document each (`<case>|a|<version>`, `<case>|closed`), never
updated in place: on the embedded database an insert costs ~0.1 ms a document, an update of
the case ~1.5 ms, and those updates held the database in front of the report path. A case's
view is its `cases` document with its changes folded in (`fold_changes`). No secondary index
at all: on SecantusDB one costs each insert more than the insert itself. Duplicate linking
reads `links`, one small document per place and category (`_id` = the link key) holding its
latest cases, so it is found by `_id` and written only for reports that name a place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from shared.db import Indexes, by_ids
from shared.errors import only_duplicates
from shared.outbox import UnitOfWork

from .domain import DirectoryView, OpenCase

REPORTS = "reports"
CASES = "cases"
CHANGES = "case_changes"
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
        self.cases = db[CASES]
        self.changes = db[CHANGES]
        self.links = db[LINKS]
        self.quarantine = db[QUARANTINE]
        self.audit = db[AUDIT]
        self.directory = db[DIRECTORY]

    @staticmethod
    def declare(indexes: Indexes) -> None:
        """No secondary index: each would cost every report insert more than the insert itself
        (SecantusDB). Reports are found by their key (`_id`), cases by their id (`_id`)."""

    async def migrate(self) -> None:
        """Stores written before intake kept a case view (`cases`) get one, once, from the reports.
        Creates the collections of the hot path up front: a transaction must not be the first
        to write to one (SecantusDB then refuses it while another transaction is open)."""
        names = set(await self.db.list_collection_names())
        for name in (REPORTS, CASES, CHANGES, LINKS):
            if name not in names:
                with contextlib.suppress(PyMongoError):  # created meanwhile by a replica
                    await self.db.create_collection(name)
        if await self.cases.find_one({}, {"_id": 1}) is not None or await self.reports.find_one({}, {"_id": 1}) is None:
            return
        batch: list[dict[str, Any]] = []
        async for doc in self.reports.find({}):
            batch.append(case_view(doc) | {k: doc[k] for k in CASE_STATE if k in doc})
            if len(batch) >= 1000:
                await self._insert_views(batch)
                batch = []
        await self._insert_views(batch)

    async def _insert_views(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            with contextlib.suppress(BulkWriteError):  # a replica migrating at the same time
                await self.cases.insert_many(docs, ordered=False)

    # ---- reports --------------------------------------------------------------------------
    async def existing(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Report key → `{case_id, envelope_id}` for the keys already stored."""
        return {d["_id"]: d for d in await by_ids(self.reports, keys, {"case_id": 1, "envelope_id": 1})}

    async def open_cases(self, link_keys: Iterable[str], since: datetime) -> dict[str, list[OpenCase]]:
        """Link key → the cases of that place and category received since `since` and still open."""
        keys = sorted(set(link_keys))
        if not keys:
            return {}
        recent: dict[str, list[OpenCase]] = {}
        for d in await by_ids(self.links, keys):
            cases = [OpenCase(c["case_id"], c["at"]) for c in d.get("cases", ())]
            recent[d["_id"]] = [c for c in cases if c.received_at >= since]
        ids = [c.case_id for cs in recent.values() for c in cs]
        if not ids:
            return {}
        still_open = {d["_id"] for d in await by_ids(self.cases, ids, {"_id": 1}, also={"open": True})}
        closures = [closure_id(i) for i in still_open]
        still_open -= {d["case_id"] for d in await by_ids(self.changes, closures, {"case_id": 1})}
        return {k: kept for k, cs in recent.items() if (kept := [c for c in cs if c.case_id in still_open])}

    def insert_reports(self, docs: Sequence[dict[str, Any]], uow: UnitOfWork) -> None:
        """The reports, their cases' view, and each under its place and category for linking
        (queued on the unit of work: written with its events at commit)."""
        uow.write(InsertOne(d, namespace=self.reports.full_name) for d in docs)
        uow.write(InsertOne(case_view(d), namespace=self.cases.full_name) for d in docs)
        linked: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            if d.get("link_key"):
                linked.setdefault(d["link_key"], []).append({"case_id": d["case_id"], "at": d["received_at"]})
        uow.write(
            UpdateOne(
                {"_id": k},
                {"$push": {"cases": {"$each": cases, "$slice": -LINKS_KEPT}}},
                upsert=True,
                namespace=self.links.full_name,
            )
            for k, cases in linked.items()
        )

    async def by_case(self, case_id: str) -> dict[str, Any] | None:
        """The case's view (assignee, community, open) over its report."""
        case = await self.cases.find_one({"_id": case_id})
        if case is None:
            return None
        # every change of the case: its `_id`s start with "<case>|" ("}" sorts right after "|")
        changes = await self.changes.find({"_id": {"$gte": f"{case_id}|", "$lt": f"{case_id}}}"}}).to_list()
        report = await self.reports.find_one({"_id": case["report"]}) or {}
        return report | fold_changes(case, changes)

    @staticmethod
    def assignment(case_id: str, version: int, assignee: str | None, scope: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {"_id": f"{case_id}|a|{version:010d}", "case_id": case_id, "assignee": assignee,
                               "assigned_version": version}
        for part in ("district", "community", "grid"):
            if scope.get(part):
                doc[part] = scope[part]
        return doc

    @staticmethod
    def closure(case_id: str, version: int) -> dict[str, Any]:
        return {"_id": closure_id(case_id), "case_id": case_id, "closed_version": version}

    async def record_changes(self, docs: list[dict[str, Any]]) -> None:
        """Assignments and closures of many cases in one insert; one learnt before (an event
        delivered again) is already there and stays as it is."""
        if not docs:
            return
        try:
            await self.changes.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if not only_duplicates(exc):
                raise

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


def closure_id(case_id: str) -> str:
    return f"{case_id}|closed"


def fold_changes(case: dict[str, Any], changes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A case's view: its document with what was learnt since. The newest assignment wins,
    whatever order the events came in; a closure closes it."""
    view = dict(case)
    for change in sorted(changes, key=lambda c: c.get("assigned_version", 0)):
        if "closed_version" in change:
            view["open"] = False
            view["closed_version"] = change["closed_version"]
        elif change["assigned_version"] > view.get("assigned_version", 0):
            view.update({k: v for k, v in change.items() if k not in ("_id", "case_id")})
    return view


CASE_STATE = ("open", "assignee", "assigned_version", "closed_version", "district", "community", "grid")


def case_view(report: dict[str, Any]) -> dict[str, Any]:
    """What intake keeps of a case apart from its report: where it is, who has it, whether it
    is open — for duplicate linking and contact look-ups. No personal data."""
    return {
        "_id": report["case_id"],
        "report": report["_id"],
        "open": True,
        "assignee": None,
        "assigned_version": 0,
        "district": report.get("district"),
        "community": report.get("community"),
        "grid": report.get("grid"),
    }
