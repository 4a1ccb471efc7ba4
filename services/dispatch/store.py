"""MongoDB persistence of dispatch: volunteers, tasks and per-case knowledge.

Hot paths are `_id` look-ups, version-guarded `replace_one` and `$inc` updates by `_id`
(never `find_one_and_update`). Every write takes the unit of work's session. A batch of case
events reads with `_id $in` and writes with one `insert_many` plus one version-guarded
`bulk_write` per collection (`save_cases`, `save_tasks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.operations import IndexModel, ReplaceOne, UpdateOne

from shared.contract.dispatch import Volunteer
from shared.db import Indexes, by_ids
from shared.errors import Conflict
from shared.timers import WAKE_INDEX

from .domain import HOURS_WINDOW, CaseInfo, Effect, Task, VolunteerState

VOLUNTEERS = "volunteers"
TASKS = "tasks"
CASES = "cases"


class DispatchStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.volunteers = db[VOLUNTEERS]
        self.tasks = db[TASKS]
        self.cases = db[CASES]

    @staticmethod
    def declare(indexes: Indexes) -> None:
        indexes.add(TASKS, WAKE_INDEX, IndexModel([("case_id", 1)]))
        indexes.add(VOLUNTEERS, IndexModel([("community", 1)]))

    # ---- volunteers ----
    async def upsert_volunteer(self, v: Volunteer, now: datetime, session: AsyncClientSession) -> None:
        """Profile fields are replaced; counters and hours of an existing volunteer are kept."""
        profile = v.model_dump(mode="json")
        profile.pop("id")
        await self.volunteers.update_one(
            {"_id": v.id},
            {"$set": {**profile, "updated_at": now}, "$setOnInsert": {"offers": 0, "tasks": 0, "hours": []}},
            upsert=True,
            session=session,
        )

    async def get_volunteer(self, volunteer_id: str, session: AsyncClientSession | None = None) -> dict[str, Any] | None:
        return await self.volunteers.find_one({"_id": volunteer_id}, session=session)

    async def load_registry(self, now: datetime) -> list[VolunteerState]:
        """Every volunteer with counters and the hours of the last 30 days."""
        since = now - HOURS_WINDOW
        out = []
        async for d in self.volunteers.find({}):
            state = volunteer_state(d)
            state.hours_log = [(h["at"], float(h["h"])) for h in d.get("hours") or () if h["at"] > since]
            out.append(state)
        return out

    async def apply_effects(self, effects: Iterable[Effect], session: AsyncClientSession) -> None:
        """Counter changes merged per volunteer, all in one `bulk_write`."""
        merged: dict[str, list[Effect]] = {}
        for e in effects:
            merged.setdefault(e.volunteer, []).append(e)
        ops = []
        for vid, es in merged.items():
            inc = {"offers": sum(e.offers for e in es), "tasks": sum(e.tasks for e in es)}
            hours = [{"at": e.at, "h": e.hours} for e in es if e.hours and e.at is not None]
            update: dict[str, Any] = {}
            if inc["offers"] or inc["tasks"]:
                update["$inc"] = {k: v for k, v in inc.items() if v}
            if hours:
                update["$push"] = {"hours": {"$each": hours}}
                update.setdefault("$inc", {})["hours_total"] = sum(h["h"] for h in hours)
            if update:
                ops.append(UpdateOne({"_id": vid}, update))
        if ops:
            await self.volunteers.bulk_write(ops, session=session)

    # ---- tasks ----
    async def get_task(self, task_id: str, session: AsyncClientSession | None = None) -> Task | None:
        doc = await self.tasks.find_one({"_id": task_id}, session=session)
        return Task.from_doc(doc) if doc else None

    async def get_tasks(self, task_ids: Iterable[str], session: AsyncClientSession | None = None) -> dict[str, Task]:
        """Tasks by id (those that exist); no statement at all for no ids."""
        return {d["_id"]: Task.from_doc(d) for d in await by_ids(self.tasks, task_ids, session=session)}

    async def save_tasks(self, tasks: Iterable[Task], session: AsyncClientSession) -> None:
        """Insert new tasks and replace changed ones, version-guarded (`Conflict` if one lost)."""
        await _save_guarded(self.tasks, list(tasks), session)

    async def save_task(self, task: Task, session: AsyncClientSession) -> None:
        """Insert a new task or replace it if nobody changed it since it was loaded."""
        expected = task.version
        task.version = expected + 1
        doc = task.to_doc()
        try:
            if expected == 0:
                await self.tasks.insert_one(doc, session=session)
                return
            result = await self.tasks.replace_one({"_id": task.id, "version": expected}, doc, session=session)
        except DuplicateKeyError as exc:
            task.version = expected
            raise Conflict(f"task {task.id} exists") from exc
        if result.matched_count != 1:
            task.version = expected
            raise Conflict(f"task {task.id} changed concurrently")

    # ---- cases ----
    async def get_case(self, case_id: str, session: AsyncClientSession | None = None) -> CaseInfo:
        doc = await self.cases.find_one({"_id": case_id}, session=session)
        return CaseInfo.from_doc(doc) if doc else CaseInfo(case_id=case_id)

    async def get_cases(self, case_ids: Iterable[str], session: AsyncClientSession | None = None) -> dict[str, CaseInfo]:
        """Every case asked for: the stored one, or a new (unsaved) one."""
        ids = list(dict.fromkeys(case_ids))
        found = {d["_id"]: CaseInfo.from_doc(d) for d in await by_ids(self.cases, ids, session=session)}
        return {cid: found.get(cid) or CaseInfo(case_id=cid) for cid in ids}

    async def save_cases(self, cases: Iterable[CaseInfo], session: AsyncClientSession) -> None:
        """Insert new case documents and replace changed ones, version-guarded."""
        await _save_guarded(self.cases, list(cases), session)

    async def save_case(self, case: CaseInfo, session: AsyncClientSession) -> None:
        await self.save_cases([case], session)

async def _save_guarded(
    collection: AsyncCollection, items: Sequence[Task | CaseInfo], session: AsyncClientSession
) -> None:
    """One `insert_many` for new documents (version 0), one `bulk_write` of `ReplaceOne`s
    guarded by the loaded version for the others. Any document that does not match — changed
    or inserted by someone else meanwhile — raises `Conflict`, so the transaction aborts.
    Versions are bumped in place; after a `Conflict` the caller loads afresh."""
    new, replaced = [], []
    for item in items:
        expected = item.version
        item.version = expected + 1
        doc = item.to_doc()
        if expected == 0:
            new.append(doc)
        else:
            replaced.append(ReplaceOne({"_id": doc["_id"], "version": expected}, doc))
    if new:
        try:
            await collection.insert_many(new, session=session)
        except BulkWriteError as exc:
            if any(e.get("code") == 11000 for e in exc.details.get("writeErrors") or ()):
                raise Conflict(f"{collection.name}: a document exists already") from exc
            raise
    if replaced:
        result = await collection.bulk_write(replaced, session=session)
        if result.matched_count != len(replaced):
            raise Conflict(f"{collection.name}: {len(replaced) - result.matched_count} changed concurrently")


def volunteer_state(d: dict[str, Any]) -> VolunteerState:
    return VolunteerState(
        id=d["_id"],
        community=d["community"],
        grid=d.get("grid"),
        skills=frozenset(d.get("skills") or ()),
        languages=frozenset(d.get("languages") or ()),
        kind=d.get("kind", "volunteer"),
        max_tasks=int(d.get("max_tasks", 2)),
        active=bool(d.get("active", True)),
        offers=int(d.get("offers", 0)),
        tasks=int(d.get("tasks", 0)),
    )
