"""Intake's view of a case: its first document with the assignments and closure appended later."""

from __future__ import annotations

import pytest

from services.intake.store import IntakeStore, fold_changes

pytestmark = pytest.mark.unit

OPENED = {"_id": "C-1", "report": "wechat:x-1", "open": True, "assignee": None, "assigned_version": 0,
          "district": "linhe", "community": "jl", "grid": None}


def test_the_newest_assignment_wins_whatever_order_the_changes_come_in() -> None:
    later = IntakeStore.assignment("C-1", 4, "director-1", {"community": "jl", "grid": None})
    earlier = IntakeStore.assignment("C-1", 2, "gw-7", {"community": "jl", "grid": "jl-g3"})
    for changes in ([earlier, later], [later, earlier]):
        view = fold_changes(OPENED, changes)
        assert view["assignee"] == "director-1" and view["assigned_version"] == 4
        assert view["grid"] == "jl-g3"  # the later assignment named no grid: the earlier one's stays
        assert view["open"] is True and view["_id"] == "C-1"


def test_a_closure_closes_the_view_and_the_stored_document_is_left_as_it_was() -> None:
    view = fold_changes(OPENED, [IntakeStore.assignment("C-1", 2, "gw-7", {}), IntakeStore.closure("C-1", 5)])
    assert view["open"] is False and view["closed_version"] == 5 and view["assignee"] == "gw-7"
    assert OPENED["open"] is True and OPENED["assignee"] is None


def test_a_view_migrated_from_an_old_store_keeps_what_it_knew() -> None:
    old = OPENED | {"assignee": "gw-1", "assigned_version": 3}
    assert fold_changes(old, [IntakeStore.assignment("C-1", 2, "gw-0", {})])["assignee"] == "gw-1"


def test_every_change_of_a_case_sorts_under_its_id_and_nothing_of_another_case_does() -> None:
    ids = [IntakeStore.assignment("C-1", v, "x", {})["_id"] for v in (2, 10, 100)] + [IntakeStore.closure("C-1", 9)["_id"]]
    assert all("C-1|" <= i < "C-1}" for i in ids)
    assert sorted(ids[:3]) == ids[:3]  # versions sort numerically
    assert not "C-1|" <= IntakeStore.closure("C-10", 1)["_id"] < "C-1}"
