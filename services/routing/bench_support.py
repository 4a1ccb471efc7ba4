"""Open cases for the timer benchmark (bench scenario 3), made by routing's own rules.

`seed_open_cases` stores cases exactly as routing would have left them: opened by
`domain.open_case` a respond clock before their deadline, warned by `domain.on_timer` at the
warning time, and now waiting for their respond deadline. The events those steps produced
are not published: they belong to the past the benchmark skips. Only the bench uses this.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.contract.case import CaseReceived
from shared.contract.directory import Directory
from shared.policy import Policy

from . import domain
from .directory import DirectoryIndex
from .domain import Ctx, Workload
from .store import CASES

INSERT_BATCH = 2000


def open_cases(
    received: Iterable[CaseReceived], due: Iterable[datetime], policy: Policy, directory: Directory
) -> list[domain.Case]:
    """Each `received` opened so that its respond deadline is the matching `due` time."""
    index = DirectoryIndex.build(directory, 1)
    workload = Workload()
    cases = []
    for data, due_at in zip(received, due, strict=True):
        due_ms = due_at.replace(microsecond=due_at.microsecond // 1000 * 1000)
        place = index.locate(data.location)
        # the respond clock depends on the start level and priority: learn it from a probe
        probe, _ = domain.open_case(data, place, Ctx(policy, index, Workload(), due_ms))
        assert probe.respond_by is not None
        opened_at = due_ms - (probe.respond_by - due_ms)
        case, _ = domain.open_case(data, place, Ctx(policy, index, workload, opened_at))
        workload.move(None, domain.workload_key(case))
        if case.respond_warn_at is not None and case.respond_warn_at < due_ms:
            domain.on_timer(case, Ctx(policy, index, workload, case.respond_warn_at))
        cases.append(case)
    return cases


async def seed_open_cases(db: AsyncDatabase, cases: list[domain.Case]) -> int:
    docs: list[dict[str, Any]] = [c.to_doc() for c in cases]
    for i in range(0, len(docs), INSERT_BATCH):
        await db[CASES].insert_many(docs[i : i + INSERT_BATCH], ordered=False)
    return len(docs)


def respond_deadlines(cases: list[domain.Case]) -> dict[str, tuple[datetime, str]]:
    """case id → (respond_by, level): what the benchmark measures lateness against."""
    return {c.id: (c.respond_by, c.level) for c in cases if c.respond_by is not None}

