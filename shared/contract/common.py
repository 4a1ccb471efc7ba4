"""Vocabulary shared by every part of the contract (DESIGN §3, §5)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _to_utc(value: datetime) -> datetime:
    """Timestamps travel with an offset and are stored as UTC; naive ones are refused."""
    if value.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset (RFC 3339)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_to_utc)]
"""An RFC 3339 timestamp with offset, normalised to UTC."""

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
"""A directory code (community, grid, building, staff id …)."""

CaseId = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^C-[0-9A-Z]+$")]


class ContractModel(BaseModel):
    """Base of every payload: unknown fields are refused so typos surface as errors."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


class Channel(StrEnum):
    hotline_12345 = "hotline_12345"
    wechat = "wechat"
    service_window = "service_window"
    grid_patrol = "grid_patrol"
    mini_program = "mini_program"
    micro_wish = "micro_wish"


class Priority(StrEnum):
    normal = "normal"
    urgent = "urgent"


class Level(StrEnum):
    building = "building"
    grid = "grid"
    community = "community"
    street = "street"


class Handling(StrEnum):
    direct = "direct"
    mediation = "mediation"
    dispatch = "dispatch"


class Satisfaction(StrEnum):
    satisfied = "satisfied"
    basically_satisfied = "basically_satisfied"
    dissatisfied = "dissatisfied"


class Language(StrEnum):
    zh = "zh"
    mn = "mn"


class PartyRole(StrEnum):
    applicant = "applicant"
    respondent = "respondent"


class Role(StrEnum):
    building_head = "building_head"
    grid_worker = "grid_worker"
    community_director = "community_director"
    mediator = "mediator"
    street_officer = "street_officer"


class Category(StrEnum):
    """The category catalogue of DESIGN §5."""

    dispute_neighbour = "dispute.neighbour"
    dispute_family = "dispute.family"
    dispute_property = "dispute.property"
    help_home_service = "help.home_service"
    help_micro_wish = "help.micro_wish"
    service_enrollment = "service.enrollment"
    service_employment = "service.employment"
    service_social_security = "service.social_security"
    facility_parking = "facility.parking"
    facility_utilities = "facility.utilities"
    facility_housing = "facility.housing"
    safety_hazard = "safety.hazard"
    environment_sanitation = "environment.sanitation"
    enquiry_policy = "enquiry.policy"
    other = "other"

    @property
    def group(self) -> str:
        """The bounded label used in metrics: `dispute`, `help`, `service` …"""
        return self.value.split(".", 1)[0]


class Scope(ContractModel):
    district: str | None = None
    community: str | None = None
    grid: str | None = None
