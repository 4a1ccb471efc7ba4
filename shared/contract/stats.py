"""The KPI query (`gridcase.cmd.stats.query.v1`, HTTP `GET /api/kpis`) and its rows (DESIGN §6)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from .common import ContractModel, Scope, UtcDatetime


class GroupBy(StrEnum):
    district = "district"
    community = "community"
    grid = "grid"
    category = "category"
    channel = "channel"
    level = "level"
    day = "day"


class KpiQuery(ContractModel):
    """Cases *received* in `[from, to)`, within `scope`, grouped by `group_by`."""

    from_: UtcDatetime = Field(alias="from")
    to: UtcDatetime
    scope: Scope = Field(default_factory=Scope)
    group_by: list[GroupBy] = Field(default_factory=list, max_length=7)

    @model_validator(mode="after")
    def _check(self) -> KpiQuery:
        if self.to <= self.from_:
            raise ValueError("`to` must be after `from`")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by names a dimension twice")
        return self


COUNT_FIELDS = (
    "received",
    "assigned",
    "responded_on_time",
    "resolved",
    "resolved_on_time",
    "resolved_in_grid",
    "resolved_in_community",
    "escalated",
    "feedback",
    "satisfied",
    "open",
    "overdue",
)
RATE_FIELDS = (
    "response_rate",
    "resolution_rate",
    "satisfaction_rate",
    "in_grid_rate",
    "in_community_rate",
    "on_time_rate",
    "score",
)


class KpiRow(ContractModel):
    key: dict[str, Any] = Field(default_factory=dict)
    received: int | None = None
    assigned: int | None = None
    responded_on_time: int | None = None
    resolved: int | None = None
    resolved_on_time: int | None = None
    resolved_in_grid: int | None = None
    resolved_in_community: int | None = None
    escalated: int | None = None
    feedback: int | None = None
    satisfied: int | None = None
    open: int | None = None
    overdue: int | None = None
    response_rate: float | None = None
    resolution_rate: float | None = None
    satisfaction_rate: float | None = None
    in_grid_rate: float | None = None
    in_community_rate: float | None = None
    on_time_rate: float | None = None
    score: float | None = None
    suppressed: bool = False


class KpiReply(ContractModel):
    ok: bool = True
    rows: list[KpiRow]
    totals: KpiRow
