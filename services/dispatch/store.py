"""MongoDB persistence of dispatch: volunteers, tasks and per-case knowledge.

Hot paths are `_id` look-ups, version-guarded `replace_one` and `$inc` updates by `_id`
(never `find_one_and_update`). Every write takes the unit of work's session.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.operations import IndexModel

from shared.contract.dispatch import Volunteer
from shared.db import Indexes
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
        merged: dict[str, list[Effect]] = {}
        for e in effects:
            merged.setdefault(e.volunteer, []).append(e)
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
                await self.volunteers.update_one({"_id": vid}, update, session=session)

    # ---- tasks ----
    async def get_task(self, task_id: str, session: AsyncClientSession | None = None) -> Task | None:
        doc = await self.tasks.find_one({"_id": task_id}, session=session)
        return Task.from_doc(doc) if doc else None

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

    async def save_case(self, case: CaseInfo, session: AsyncClientSession) -> None:
        expected = case.version
        case.version = expected + 1
        doc = case.to_doc()
        try:
            if expected == 0:
                await self.cases.insert_one(doc, session=session)
                return
            result = await self.cases.replace_one({"_id": case.case_id, "version": expected}, doc, session=session)
        except DuplicateKeyError as exc:
            case.version = expected
            raise Conflict(f"case {case.case_id} exists") from exc
        if result.matched_count != 1:
            case.version = expected
            raise Conflict(f"case {case.case_id} changed concurrently")


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
