"""DueSlice: how the timer poller walks a backlog of due documents a slice at a time."""

from datetime import UTC, datetime, timedelta

from shared.timers import MAX_SPAN, MIN_SPAN, DueSlice

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def test_caught_up_it_asks_for_everything_due() -> None:
    cut = DueSlice()
    assert cut.query("wake_at", NOW) == ({"wake_at": {"$lte": NOW}}, NOW)
    cut.advance(NOW - 5 * S, NOW - S, full=False, high=NOW, now=NOW)
    assert cut.low is None


def test_a_full_batch_starts_slices_at_its_last_due_time_spanning_what_the_batch_spanned() -> None:
    cut = DueSlice()
    cut.advance(NOW - 60 * S, NOW - 50 * S, full=True, high=NOW, now=NOW)
    assert cut.low == NOW - 50 * S and cut.span == 10 * S
    query, high = cut.query("wake_at", NOW)
    assert query == {"wake_at": {"$gte": NOW - 50 * S, "$lte": NOW - 40 * S}} and high == NOW - 40 * S


def test_a_slice_that_fills_a_batch_halves_one_that_does_not_doubles_and_moves_on() -> None:
    cut = DueSlice(low=NOW - 50 * S, span=8 * S)
    cut.advance(NOW - 50 * S, NOW - 47 * S, full=True, high=NOW - 42 * S, now=NOW)
    assert (cut.low, cut.span) == (NOW - 47 * S, 4 * S)
    cut.advance(NOW - 47 * S, NOW - 44 * S, full=False, high=NOW - 43 * S, now=NOW)
    assert (cut.low, cut.span) == (NOW - 43 * S, 8 * S)
    cut.advance(None, None, full=False, high=NOW - 35 * S, now=NOW)  # an empty slice: on to the next
    assert (cut.low, cut.span) == (NOW - 35 * S, 16 * S)


def test_the_span_stays_within_its_bounds() -> None:
    cut = DueSlice(low=NOW - 600 * S, span=MAX_SPAN)
    cut.advance(None, None, full=False, high=NOW - 540 * S, now=NOW)
    assert cut.span == MAX_SPAN
    cut = DueSlice(low=NOW - 600 * S, span=MIN_SPAN)
    cut.advance(NOW - 600 * S, NOW - 600 * S, full=True, high=NOW - 599 * S, now=NOW)
    assert cut.span == MIN_SPAN


def test_a_slice_reaching_now_with_room_left_means_caught_up() -> None:
    cut = DueSlice(low=NOW - 2 * S, span=10 * S)
    query, high = cut.query("wake_at", NOW)
    assert high == NOW
    cut.advance(NOW - 2 * S, NOW - S, full=False, high=high, now=NOW)
    assert cut.low is None
