"""DueSlice: how the timer poller walks a backlog of due documents a slice at a time; DuePoller's
overlap of one batch's write with the next query."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import shared.timers
from shared.timers import MAX_SPAN, MIN_SPAN, DuePoller, DueSlice

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


class _SlowFinds:
    """A collection whose finds return what the test says, when the test says."""

    name = "things"

    def __init__(self) -> None:
        self.database = {"leases": None}
        self.answers: list[tuple[asyncio.Event | None, list[dict]]] = []
        self.queries: list[dict] = []

    def find(self, query, **_options):
        self.queries.append(query)
        gate, docs = self.answers.pop(0)

        class _Cursor:
            def sort(self, *a):
                return self

            def limit(self, n):
                return self

            async def to_list(self):
                if gate is not None:
                    await gate.wait()
                return docs

        return _Cursor()


async def test_overlap_never_hands_over_a_stale_read_of_a_batch_that_finished_meanwhile() -> None:
    """overlap=2: the first batch is written while the next query runs; that query read the
    batch's documents before they moved on. They are not handed over a second time."""
    now = datetime.now(UTC)
    a = [{"_id": "a1", "wake_at": now}, {"_id": "a2", "wake_at": now}]
    b = [{"_id": "b1", "wake_at": now}]
    written = asyncio.Event()
    handed: list[str] = []

    async def on_due(docs, _now) -> None:
        handed.extend(d["_id"] for d in docs)
        if docs[0]["_id"] == "a1":
            written.set()  # a's write commits while the next query is still running

    col = _SlowFinds()
    col.answers = [(None, a), (written, a + b)]
    poller = DuePoller(col, on_due, overlap=2)  # type: ignore[arg-type]
    await poller.poll_once(now)
    await poller.poll_once(now)
    await poller.settle()
    assert handed == ["a1", "a2", "b1"]


async def _poll_with_a_batch_in_hand(
    full_poll_s: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[_SlowFinds, DuePoller, datetime, asyncio.Event]:
    """Batch a is handed over and stays in hand (its write ends when the event is set); then
    one more poll."""
    monkeypatch.setattr(shared.timers, "FULL_POLL_S", full_poll_s)
    now = datetime.now(UTC)
    a = [{"_id": "a1", "wake_at": now - 3 * S}, {"_id": "a2", "wake_at": now - 2 * S}]
    b = [{"_id": "b1", "wake_at": now - S}]
    written = asyncio.Event()

    async def on_due(docs, _now) -> None:
        await written.wait()

    col = _SlowFinds()
    col.answers = [(None, a), (None, [a[1], *b])]
    poller = DuePoller(col, on_due, overlap=2)  # type: ignore[arg-type]
    await poller.poll_once(now)
    await poller.poll_once(now)
    return col, poller, now, written


async def test_with_a_batch_in_hand_a_caught_up_poll_reads_on_from_its_newest_due_time(monkeypatch) -> None:
    """Documents in hand stay due until written: reading them again on every poll was a sixth
    of the database's work in a burst of escalations."""
    col, poller, now, written = await _poll_with_a_batch_in_hand(60.0, monkeypatch)
    assert col.queries == [{"wake_at": {"$lte": now}}, {"wake_at": {"$gte": now - 2 * S, "$lte": now}}]
    assert poller._in_hand == {"a1", "a2", "b1"}  # a2, read again at the slice's start, not handed twice
    written.set()
    await poller.settle()
    assert not poller._in_hand and poller._hand_high is None
    col.answers = [(None, [])]
    await poller.poll_once(now)  # nothing in hand: everything due, so nothing left behind below stays
    assert col.queries[-1] == {"wake_at": {"$lte": now}}


async def test_with_batches_in_hand_everything_due_is_still_read_every_full_poll_interval(monkeypatch) -> None:
    col, poller, now, written = await _poll_with_a_batch_in_hand(0.0, monkeypatch)
    assert col.queries == [{"wake_at": {"$lte": now}}, {"wake_at": {"$lte": now}}]
    written.set()
    await poller.settle()
