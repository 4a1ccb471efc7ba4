"""MongoDB access on PyMongo's async API, and each service's index declarations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from prometheus_client import CollectorRegistry, Histogram
from pymongo import AsyncMongoClient, ReplaceOne, UpdateMany, monitoring
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import IndexModel


class DatabaseMetrics(monitoring.CommandListener):
    """`gridcase_db_command_seconds{command, collection}`: where a service's database time goes.
    Labels are bounded: command names and the service's own collection names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "gridcase_db_command_seconds",
            "Database commands by command and collection, as the driver timed them",
            ["command", "collection"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self._collection: dict[int, str] = {}
        self._children: dict[tuple[str, str], Any] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        self._collection[event.request_id] = target if isinstance(target, str) else "-"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._observe(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._observe(event)

    def _observe(self, event: Any) -> None:
        key = (event.command_name, self._collection.pop(event.request_id, "-"))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.seconds.labels(*key)
        child.observe(event.duration_micros / 1e6)


def make_client(url: str, *, app_name: str = "gridcase", registry: CollectorRegistry | None = None) -> AsyncMongoClient:
    """One client per process; it pools connections. `tz_aware` keeps datetimes UTC-aware."""
    listeners = [DatabaseMetrics(registry)] if registry is not None else []
    return AsyncMongoClient(
        url, tz_aware=True, appname=app_name, serverSelectionTimeoutMS=10_000, event_listeners=listeners
    )


@dataclass
class Indexes:
    """Index declarations per collection, applied at service start."""

    by_collection: dict[str, list[IndexModel]] = field(default_factory=dict)

    def add(self, collection: str, *models: IndexModel) -> None:
        self.by_collection.setdefault(collection, []).extend(models)

    async def apply(self, db: AsyncDatabase) -> None:
        for collection, models in self.by_collection.items():
            if models:
                await db[collection].create_indexes(models)


async def ping(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
        return True
    except Exception:
        return False


async def by_ids(
    collection: AsyncCollection,
    ids: Iterable[Any],
    projection: Mapping[str, Any] | None = None,
    *,
    also: Mapping[str, Any] | None = None,
    session: AsyncClientSession | None = None,
) -> list[dict[str, Any]]:
    """The documents with these `_id`s (and matching `also`) that exist, all in one reply: a
    find's first reply holds 101 documents unless told, and each further batch is another
    round trip on the hot path. No statement at all for no ids."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    query = {"_id": {"$in": wanted}, **(also or {})}
    cursor = collection.find(query, projection, session=session, batch_size=len(wanted))
    return await cursor.to_list()


def strip_id(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


# SecantusDB plans, locks and frames a write a statement at a time: one `updateMany` over 100
# `_id`s costs about half of 100 `ReplaceOne`s (measured: 1,630 vs 935 documents/s). Larger
# groups get slower again, so a group is written in chunks of this many.
GROUP_CHUNK = 100


def guarded_writes(
    changes: Iterable[tuple[dict[str, Any], dict[str, Any]]], guard: str, *, namespace: str | None = None
) -> list[ReplaceOne | UpdateMany]:
    """The writes that turn each `before` document into its `after`, each guarded by `before`'s
    `guard` field (a revision), so a document that moved on meanwhile is not matched.

    Documents whose change is the same — an escalation batch: same level, unit, assignee and
    deadlines — are written together by `UpdateMany({_id: {$in}, guard: rev})`; a lone change
    is a `ReplaceOne`. Either way every document is matched at most once, so the caller knows
    all were written when the matched count equals the number of changes. `namespace`
    ("db.collection") makes them writes for `client.bulk_write`."""
    ns = {"namespace": namespace} if namespace else {}
    groups: dict[bytes, tuple[Any, dict[str, Any], list[Any], dict[str, Any]]] = {}
    for before, after in changes:
        update = _update_from(before, after)
        # an unchanged document still has its guard checked: alone, by a `ReplaceOne`
        key = bson.encode({"g": before[guard], "u": update} if update else {"_id": after["_id"]})
        group = groups.setdefault(key, (before[guard], update, [], after))
        group[2].append(after["_id"])
    ops: list[ReplaceOne | UpdateMany] = []
    for rev, update, ids, after in groups.values():
        if len(ids) == 1:
            ops.append(ReplaceOne({"_id": ids[0], guard: rev}, after, **ns))
            continue
        for i in range(0, len(ids), GROUP_CHUNK):
            ops.append(UpdateMany({"_id": {"$in": ids[i : i + GROUP_CHUNK]}, guard: rev}, update, **ns))
    return ops


def _update_from(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`$set` what changed, `$inc` integer counters (the same step for every document of a group
    even where their values differ, e.g. `version`), `$unset` what is gone."""
    set_: dict[str, Any] = {}
    inc: dict[str, int] = {}
    for k, v in after.items():
        if k == "_id":
            continue
        old = before.get(k, _MISSING)
        if type(old) is type(v) and old == v:
            continue
        if type(v) is int and type(old) is int:
            inc[k] = v - old
        else:
            set_[k] = v
    update: dict[str, Any] = {}
    if set_:
        update["$set"] = set_
    if inc:
        update["$inc"] = inc
    if gone := [k for k in before if k not in after]:
        update["$unset"] = dict.fromkeys(gone, "")
    return update


_MISSING = object()
