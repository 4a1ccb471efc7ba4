"""`shared.db.by_ids` against a real SecantusDB: a hot path's batch of documents by `_id` comes
back in one reply, whatever its size."""

from __future__ import annotations

import pytest
from pymongo import AsyncMongoClient, monitoring

from shared.db import by_ids

pytestmark = pytest.mark.integration


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_batch_larger_than_a_first_reply_comes_back_in_one_find(mongodb_url, db_prefix) -> None:
    commands = Commands()
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, event_listeners=[commands])
    try:
        coll = client[f"{db_prefix}_ids"]["docs"]
        await coll.insert_many([{"_id": f"d{i}", "open": i % 2 == 0, "n": i} for i in range(300)])
        wanted = [f"d{i}" for i in range(250)] + ["missing", "d0"]  # a repeat and an unknown id
        commands.names.clear()

        docs = await by_ids(coll, wanted)

        assert sorted(d["_id"] for d in docs) == sorted(f"d{i}" for i in range(250))
        assert commands.names == ["find"]  # 250 > 101 (a find's default first reply): no getMore

        commands.names.clear()
        open_ = await by_ids(coll, wanted, {"_id": 1}, also={"open": True})
        assert sorted(d["_id"] for d in open_) == sorted(f"d{i}" for i in range(0, 250, 2))
        assert all(set(d) == {"_id"} for d in open_)

        assert await by_ids(coll, []) == []
        assert commands.names == ["find"]  # no ids, no statement
    finally:
        await client.close()
