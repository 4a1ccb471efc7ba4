"""Thin subscribers and HTTP handlers of the stats service."""

from __future__ import annotations

from datetime import date, datetime, time
from importlib import resources
from typing import Any

from faststream.asgi import AsgiResponse
from pydantic import ValidationError

from shared.app import json_response, query_params
from shared.batching import OFF_PATH_INTERVAL_S, Coalescer
from shared.contract.envelope import RawEvent
from shared.contract.stats import KpiQuery
from shared.errors import field_errors

from .engine import Item, StatsEngine, item_for


class Handlers:
    def __init__(self, engine: StatsEngine) -> None:
        self.engine = engine
        # a projection is on nobody's latency path: at most ~10 transactions a second, so it
        # leaves the shared database to intake and routing under load
        self.coalescer: Coalescer[Item, None] = Coalescer(
            engine.apply, max_batch=2000, max_delay=0.005, min_interval=OFF_PATH_INTERVAL_S
        )

    async def on_event(self, body: RawEvent) -> None:
        item = item_for(body)
        if item is not None:
            await self.coalescer.submit(item)

    async def on_query(self, body: Any) -> dict[str, Any]:
        return await self.engine.query(body.data)

    # ---- HTTP ---------------------------------------------------------------------------

    def parse_query(self, params: dict[str, list[str]]) -> KpiQuery:
        """`from`/`to` as RFC 3339 or a local date (YYYY-MM-DD); default: today."""
        one = {k: v[-1] for k, v in params.items() if v}
        today = self.engine.periods()["today"]
        raw: dict[str, Any] = {
            "from": self._when(one.get("from")) or today[0],
            "to": self._when(one.get("to")) or today[1],
            "scope": {k: one[k] for k in ("district", "community", "grid") if one.get(k)},
            "group_by": [g.strip() for g in one.get("group_by", "").split(",") if g.strip()],
        }
        return KpiQuery.model_validate(raw)

    def _when(self, value: str | None) -> Any:
        if not value:
            return None
        if len(value) == 10:
            try:
                return datetime.combine(date.fromisoformat(value), time(0), self.engine.tz)
            except ValueError:
                return value
        return value.replace(" ", "+")  # a '+' offset arrives as a space when not URL-encoded

    async def http_kpis(self, scope: dict) -> AsgiResponse:
        try:
            q = self.parse_query(query_params(scope))
        except ValidationError as exc:
            return json_response(
                {"ok": False, "error": {"code": "invalid", "message": "invalid query", "details": field_errors(exc)}},
                400,
            )
        return json_response(await self.engine.query(q))

    async def http_recent(self, scope: dict) -> AsgiResponse:
        return json_response({"events": list(self.engine.recent)})

    async def http_overview(self, scope: dict) -> AsgiResponse:
        e = self.engine
        periods = e.periods()
        return json_response(
            {
                "timezone": str(e.tz),
                "periods": {k: [a.isoformat(), b.isoformat()] for k, (a, b) in periods.items()},
                "backlog": e.backlog_by_level(),
                "escalations": {k: e.escalations(a, b) for k, (a, b) in periods.items()},
                "mediation": {
                    "opened": e.aux_totals["mediation_opened"],
                    "agreed": e.aux_totals["mediation_agreed"],
                    "failed": e.aux_totals["mediation_failed"],
                },
                "volunteer_hours": round(sum(v for k, v in e.aux_totals.items() if k.startswith("hours|")), 2),
                "directory": {"communities": e.directory.get("communities", {}), "grids": e.directory.get("grids", {})},
            }
        )


STATIC_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}


def static(name: str):
    """A route serving one file of `services/stats/dashboard/` (read once)."""
    body = resources.files("services.stats").joinpath("dashboard", name).read_bytes()
    headers = {"content-type": STATIC_TYPES[name.rsplit(".", 1)[1]], "cache-control": "no-cache"}

    async def handler(scope: dict) -> AsgiResponse:
        return AsgiResponse(body, 200, headers)

    return handler
