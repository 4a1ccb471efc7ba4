"""MongoDB persistence of the stats projections (database `gridcase_stats`).

- `facts`: one document per case (`_id` = case id), see `projection.py`; carries its current
  rollup contribution (`contrib`) and `wake_at` (when its overdue flag flips).
- `cells`: the rollup cells (`_id` = day|dims), absolute counter vectors.
- `aux`: one document per mediation (`m:<id>`) and volunteer task (`t:<id>`).
- `meta`: the directory names and the projection `generation` (bumped by `rebuild`).

Writes of one batch go in one transaction: facts, cells and aux together, so a crash never
leaves cells that disagree with the facts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DeleteOne, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import IndexModel

from shared.timers import WAKE_INDEX

FACTS, CELLS, AUX, META = "facts", "cells", "aux", "meta"
COLLECTIONS = (FACTS, CELLS, AUX, META)
DAY_INDEX = IndexModel([("day", ASCENDING)])


def cell_id(day: str, dims: Sequence[Any]) -> str:
    return day + "|" + json.dumps(list(dims), ensure_ascii=False, separators=(",", ":"))


class StatsStore:
    def __init__(self, db: AsyncDatabase, *, use_transactions: bool = True) -> None:
        self.db = db
        self.client = db.client
        self.use_transactions = use_transactions

    @staticmethod
    def declare(indexes: Any) -> None:
        indexes.add(FACTS, WAKE_INDEX, DAY_INDEX)

    async def ensure_indexes(self) -> None:
        await self.db[FACTS].create_indexes([WAKE_INDEX, DAY_INDEX])

    # ---- reads --------------------------------------------------------------------------

    async def get_facts(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """By `_id`, one `find_one` each, concurrently ($in is slow on SecantusDB)."""
        coll = self.db[FACTS]
        docs = await asyncio.gather(*(coll.find_one({"_id": i}) for i in ids))
        return {d["_id"]: d for d in docs if d is not None}

    async def get_aux(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        coll = self.db[AUX]
        docs = await asyncio.gather(*(coll.find_one({"_id": i}) for i in ids))
        return {d["_id"]: d for d in docs if d is not None}

    async def count_facts(self) -> int:
        return await self.db[FACTS].estimated_document_count()

    async def all_facts(self) -> list[dict[str, Any]]:
        return await self.db[FACTS].find({}).to_list()

    async def all_cells(self) -> list[dict[str, Any]]:
        return await self.db[CELLS].find({}).to_list()

    async def all_aux(self) -> list[dict[str, Any]]:
        return await self.db[AUX].find({}).to_list()

    async def facts_of_day(self, day: str, start: float, end: float) -> list[dict[str, Any]]:
        cursor = self.db[FACTS].find({"day": day}, {"contrib": 1, "received_at": 1})
        return [d for d in await cursor.to_list() if start <= d.get("received_at", -1) < end]

    async def meta(self, key: str) -> dict[str, Any] | None:
        return await self.db[META].find_one({"_id": key})

    async def put_meta(self, key: str, doc: dict[str, Any]) -> None:
        await self.db[META].replace_one({"_id": key}, {"_id": key, **doc}, upsert=True)

    async def generation(self) -> int:
        doc = await self.meta("generation")
        return int(doc["n"]) if doc else 0

    # ---- writes -------------------------------------------------------------------------

    async def commit(
        self,
        facts: Sequence[dict[str, Any]],
        cells: Sequence[tuple[str, tuple[Any, ...], list[int]]],
        aux: Sequence[dict[str, Any]],
    ) -> None:
        fact_ops = [ReplaceOne({"_id": f["_id"]}, f, upsert=True) for f in facts]
        cell_ops: list[Any] = []
        for day, dims, counts in cells:
            _id = cell_id(day, dims)
            if any(counts):
                cell_ops.append(ReplaceOne({"_id": _id}, {"_id": _id, "day": day, "dims": list(dims), "c": counts}, upsert=True))
            else:
                cell_ops.append(DeleteOne({"_id": _id}))
        aux_ops = [ReplaceOne({"_id": a["_id"]}, a, upsert=True) for a in aux]
        if not (fact_ops or cell_ops or aux_ops):
            return

        async def write(session: Any = None) -> None:
            if fact_ops:
                await self.db[FACTS].bulk_write(fact_ops, ordered=False, session=session)
            if cell_ops:
                await self.db[CELLS].bulk_write(cell_ops, ordered=False, session=session)
            if aux_ops:
                await self.db[AUX].bulk_write(aux_ops, ordered=False, session=session)

        if not self.use_transactions:
            await write()
            return
        async with self.client.start_session() as session:
            async with await session.start_transaction():
                await write(session)

    async def drop_projections(self) -> None:
        for name in (FACTS, CELLS, AUX):
            await self.db[name].drop()
        await self.ensure_indexes()

    async def bump_generation(self) -> int:
        n = await self.generation() + 1
        await self.put_meta("generation", {"n": n})
        return n
