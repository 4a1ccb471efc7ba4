"""`shared.errors.lost_race`: which failures mean "load again, decide again"."""

from __future__ import annotations

import pytest
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from shared.errors import Conflict, DomainError, lost_race

pytestmark = pytest.mark.unit


def labelled(label: str) -> PyMongoError:
    return OperationFailure("conflict", code=0, details={"errorLabels": [label]})


def test_races_are_recognised() -> None:
    assert lost_race(Conflict())
    assert lost_race(labelled("TransientTransactionError"))
    assert lost_race(OperationFailure("WriteConflict", code=112))
    assert lost_race(OperationFailure("NoSuchTransaction", code=251))
    assert lost_race(BulkWriteError({"writeErrors": [{"index": 0, "code": 112, "errmsg": "WriteConflict"}]}))


def test_other_failures_are_not_races() -> None:
    assert not lost_race(DuplicateKeyError("E11000", code=11000))
    assert not lost_race(BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}]}))
    assert not lost_race(OperationFailure("bad", code=2))
    assert not lost_race(DomainError("x", "refused"))
    assert not lost_race(RuntimeError("boom"))
