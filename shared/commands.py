"""Command idempotency: a repeated envelope `id` answers as the first time and changes nothing.

Record the reply inside the same unit of work as the state change it answers, so a crash
cannot leave one without the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

COMMAND_LOG = "command_log"


class CommandLog:
    def __init__(self, db: AsyncDatabase) -> None:
        self.collection = db[COMMAND_LOG]

    async def replay(self, command_id: str) -> dict[str, Any] | None:
        doc = await self.collection.find_one({"_id": command_id})
        return doc["reply"] if doc else None

    async def record(self, command_id: str, reply: dict[str, Any], *, session: AsyncClientSession | None = None) -> None:
        try:
            await self.collection.insert_one(
                {"_id": command_id, "reply": reply, "at": datetime.now(UTC)}, session=session
            )
        except DuplicateKeyError:  # a racing replica answered the same command first
            pass
