"""MongoDB access on PyMongo's async API, and each service's index declarations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.operations import IndexModel


def make_client(url: str, *, app_name: str = "gridcase") -> AsyncMongoClient:
    """One client per process; it pools connections. `tz_aware` keeps datetimes UTC-aware."""
    return AsyncMongoClient(url, tz_aware=True, appname=app_name, serverSelectionTimeoutMS=10_000)


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


def strip_id(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}
