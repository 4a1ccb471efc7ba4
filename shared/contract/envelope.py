"""The CloudEvents 1.0 envelope (structured JSON mode) that wraps every message body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from .common import UtcDatetime

DataT = TypeVar("DataT")


def new_id() -> str:
    """A unique, time-sortable event id (ULID)."""
    return str(ULID())


class Envelope(BaseModel, Generic[DataT]):
    """CloudEvents 1.0; `type` equals the NATS subject, `subject` is the opaque case id."""

    model_config = ConfigDict(extra="allow")  # CloudEvents extensions are allowed

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=256, pattern=r"^gridcase\.[a-z0-9_.]+\.v[0-9]+$")
    time: UtcDatetime
    subject: str | None = Field(default=None, max_length=128)
    datacontenttype: Literal["application/json"] = "application/json"
    data: DataT

    @classmethod
    def new(
        cls,
        type: str,
        data: Any,
        *,
        source: str,
        subject: str | None = None,
        id: str | None = None,
        time: datetime | None = None,
    ) -> Envelope[Any]:
        return Envelope[Any](
            id=id or new_id(),
            source=source,
            type=type,
            time=time or datetime.now(UTC),
            subject=subject,
            data=data,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


RawEvent = Envelope[dict[str, Any]]
"""An envelope whose data is not yet typed; `catalogue.parse_data` types it."""
