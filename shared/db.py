"""MongoDB access on PyMongo's async API, and each service's index declarations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from pymongo import AsyncMongoClient, monitoring
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


def strip_id(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}
