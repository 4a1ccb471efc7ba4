"""Routing's Prometheus metrics (bounded labels: level, reason, community, on_time, clock)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel

from .domain import ACTIVE, Case


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.assigned = Counter(
            "gridcase_routing_cases_assigned", "Case assignments", ["level", "reason"], registry=registry
        )
        self.escalated = Counter(
            "gridcase_routing_cases_escalated", "Escalations, by the level left", ["level", "reason"], registry=registry
        )
        self.resolved = Counter(
            "gridcase_routing_cases_resolved", "Resolutions", ["level", "on_time"], registry=registry
        )
        self.referrals = Counter("gridcase_routing_referrals", "Cases referred to a city department", registry=registry)
        self.warnings = Counter("gridcase_routing_sla_warnings", "SLA warnings", ["clock"], registry=registry)
        self.closed = Counter("gridcase_routing_cases_closed", "Closed cases", ["reason"], registry=registry)
        self.open = Gauge(
            "gridcase_routing_open_cases", "Open cases (assigned, accepted, referred)", ["level", "community"],
            registry=registry,
        )
        self.overdue = Gauge(
            "gridcase_routing_overdue_cases", "Open cases overdue at the top of the ladder", ["level", "community"],
            registry=registry,
        )
        self.lateness = Histogram(
            "gridcase_routing_timer_lateness_seconds",
            "How late a due timer was processed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )

    def reset(self) -> None:
        self.open.clear()
        self.overdue.clear()

    def _gauge(self, state: str, level: str, community: str | None, overdue: bool, sign: int) -> None:
        if state not in ACTIVE:
            return
        label = community or "none"
        self.open.labels(level, label).inc(sign)
        if overdue:
            self.overdue.labels(level, label).inc(sign)

    def account(self, case: Case | None, sign: int) -> None:
        if case is not None:
            self._gauge(case.state, case.level, case.scope.get("community"), case.is_overdue, sign)

    def account_doc(self, doc: dict[str, Any], sign: int) -> None:
        state = doc.get("state", "")
        overdue = bool(doc.get("overdue")) and state != "referred"
        self._gauge(state, doc.get("level", ""), (doc.get("scope") or {}).get("community"), overdue, sign)

    def observe(self, events: Sequence[tuple[str, BaseModel]]) -> None:
        for name, data in events:
            d: Any = data
            if name == "assigned":
                self.assigned.labels(d.level.value, d.reason.value).inc()
            elif name == "escalated":
                self.escalated.labels(d.from_level.value, d.reason.value).inc()
            elif name == "resolved":
                self.resolved.labels(d.level.value, str(d.on_time).lower()).inc()
            elif name == "referred":
                self.referrals.inc()
            elif name == "sla_warning":
                self.warnings.labels(d.clock.value).inc()
            elif name == "closed":
                self.closed.labels(d.reason.value).inc()

    def timer_lateness(self, values: Iterable[float]) -> None:
        for v in values:
            self.lateness.observe(max(0.0, v))
