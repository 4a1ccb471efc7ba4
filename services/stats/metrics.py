"""Prometheus metrics of the stats service (bounded labels only: no person, no sensitive attribute)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TIME_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 259200, 604800)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "gridcase_cases_received_total", "Cases received", ["channel", "community"], registry=registry
        )
        self.assigned = Counter("gridcase_cases_assigned_total", "Case assignments", ["level"], registry=registry)
        self.escalated = Counter(
            "gridcase_cases_escalated_total", "Case escalations (from level)", ["level", "reason"], registry=registry
        )
        self.resolved = Counter(
            "gridcase_cases_resolved_total", "Case resolutions", ["level", "on_time"], registry=registry
        )
        self.open = Gauge("gridcase_cases_open", "Open cases now", ["level", "community"], registry=registry)
        self.overdue = Gauge("gridcase_cases_overdue", "Overdue open cases now", ["level", "community"], registry=registry)
        self.time_to_accept = Histogram(
            "gridcase_time_to_accept_seconds",
            "From assignment to acceptance",
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.time_to_resolve = Histogram(
            "gridcase_time_to_resolve_seconds",
            "From receipt to resolution",
            buckets=TIME_BUCKETS,
            registry=registry,
        )
        self.mediation = Counter(
            "gridcase_mediation_outcomes_total", "Mediation outcomes", ["outcome"], registry=registry
        )
        self.dispatch = Counter("gridcase_dispatch_outcomes_total", "Dispatch outcomes", ["outcome"], registry=registry)
        self.hours = Counter(
            "gridcase_volunteer_hours_total", "Volunteer hours completed", ["community"], registry=registry
        )
