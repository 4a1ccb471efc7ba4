"""`shared.db.guarded_writes` against a real SecantusDB: cases changed alike are written by one
statement, each still guarded by its revision; what it writes equals what a replace would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient, ReplaceOne, UpdateMany

from shared.db import GROUP_CHUNK, guarded_writes

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def case(i: int, rev: int = 3, version: int | None = None) -> dict:
    return {
        "_id": f"C-{i:04d}",
        "rev": rev,
        "version": version if version is not None else 2 + i % 3,  # versions differ case to case
        "level": "grid",
        "unit": "c1-g01",
        "assignee": "gw-1",
        "scope": {"community": "c1", "grid": "c1-g01"},
        "warned": ["respond"],
        "located": True,
        "respond_by": NOW,
        "paused_at": None,
        "legacy": "x",
    }


def escalate(doc: dict) -> dict:
    after = {k: v for k, v in doc.items() if k != "legacy"}
    return after | {
        "rev": doc["rev"] + 1,
        "version": doc["version"] + 2,
        "level": "community",
        "unit": "c1",
        "assignee": "dir-1",
        "warned": [],
        "respond_by": NOW + timedelta(hours=1),
    }


def test_cases_changed_alike_are_one_update_many_with_the_same_step_for_each() -> None:
    changes = [(case(i), escalate(case(i))) for i in range(5)]
    [op] = guarded_writes(changes, "rev")
    assert isinstance(op, UpdateMany)
    doc = op._doc
    assert op._filter == {"_id": {"$in": [f"C-{i:04d}" for i in range(5)]}, "rev": 3}
    assert doc["$inc"] == {"rev": 1, "version": 2}
    assert doc["$set"] == {"level": "community", "unit": "c1", "assignee": "dir-1", "warned": [], "respond_by": NOW + timedelta(hours=1)}
    assert doc["$unset"] == {"legacy": ""}


def test_a_lone_change_a_different_revision_or_a_different_change_is_its_own_write() -> None:
    other_rev = case(7, rev=9)
    moved = case(8)
    changes = [
        (case(1), escalate(case(1))),
        (case(2), escalate(case(2))),
        (other_rev, escalate(other_rev)),  # same change, other revision: not the same guard
        (moved, escalate(moved) | {"assignee": "dir-2"}),  # another assignee
    ]
    ops = guarded_writes(changes, "rev")
    assert [type(op) for op in ops] == [UpdateMany, ReplaceOne, ReplaceOne]
    assert ops[1]._filter == {"_id": "C-0007", "rev": 9} and ops[1]._doc == escalate(other_rev)
    assert ops[2]._doc["assignee"] == "dir-2"


def test_unchanged_documents_are_each_checked_by_their_own_replace() -> None:
    ops = guarded_writes([(case(1), case(1)), (case(2), case(2))], "rev")
    assert [(type(op), op._filter) for op in ops] == [
        (ReplaceOne, {"_id": "C-0001", "rev": 3}),
        (ReplaceOne, {"_id": "C-0002", "rev": 3}),
    ]


def test_a_big_group_is_written_in_chunks() -> None:
    n = GROUP_CHUNK * 2 + 5
    ops = guarded_writes([(case(i), escalate(case(i))) for i in range(n)], "rev")
    assert [len(op._filter["_id"]["$in"]) for op in ops] == [GROUP_CHUNK, GROUP_CHUNK, 5]


async def test_the_writes_equal_replacing_and_a_case_that_moved_on_is_not_matched(mongodb_url, db_prefix) -> None:
    client: AsyncMongoClient = AsyncMongoClient(mongodb_url, tz_aware=True)
    coll = client[f"{db_prefix}_guarded"]["cases"]
    try:
        docs = [case(i) for i in range(250)]
        await coll.insert_many([dict(d) for d in docs])
        # one case moved on after it was read (a command won the race)
        await coll.update_one({"_id": "C-0100"}, {"$set": {"rev": 4, "assignee": "gw-2"}})
        ops = guarded_writes([(d, escalate(d)) for d in docs], "rev")
        assert len(ops) == 3  # 250 cases changed alike: three statements
        res = await coll.bulk_write(ops, ordered=False)
        assert res.matched_count == 249  # the caller sees the lost race
        stored = {d["_id"]: d async for d in coll.find({})}
        for d in docs:
            if d["_id"] == "C-0100":
                assert stored[d["_id"]]["rev"] == 4 and stored[d["_id"]]["assignee"] == "gw-2"
            else:
                assert stored[d["_id"]] == escalate(d)
    finally:
        await client.drop_database(f"{db_prefix}_guarded")
        await client.close()
