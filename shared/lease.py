"""A lease in the service's own database: one replica at a time does a singleton job.

Timers are polled by whichever replica holds the lease, so several replicas never race on
the same due documents (their writes are version-guarded anyway; this keeps them from
wasting the database on conflicts). A holder that dies loses the lease after `ttl`.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from ulid import ULID

LEASES = "leases"


class Lease:
    def __init__(self, db: AsyncDatabase, name: str, *, ttl: float = 5.0) -> None:
        self.collection = db[LEASES]
        self.name = name
        self.ttl = timedelta(seconds=ttl)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{ULID()}"
        self.held_until: datetime | None = None

    def held(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.held_until is not None and now < self.held_until - self.ttl / 3

    async def acquire(self, now: datetime | None = None) -> bool:
        """Take or renew the lease; True while this process holds it."""
        now = now or datetime.now(UTC)
        until = now + self.ttl
        result = await self.collection.update_one(
            {"_id": self.name, "$or": [{"owner": self.owner}, {"until": {"$lt": now}}]},
            {"$set": {"owner": self.owner, "until": until}},
        )
        if result.matched_count == 0:
            try:
                await self.collection.insert_one({"_id": self.name, "owner": self.owner, "until": until})
            except DuplicateKeyError:
                self.held_until = None
                return False
        self.held_until = until
        return True

    async def release(self) -> None:
        await self.collection.delete_one({"_id": self.name, "owner": self.owner})
        self.held_until = None
