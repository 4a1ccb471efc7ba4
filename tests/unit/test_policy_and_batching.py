from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from shared.batching import Coalescer
from shared.contract.common import Category, Level, Priority
from shared.contract.subjects import SERVICES
from shared.locks import KeyClaims
from shared.policy import Policy, PolicyError, load_policy
from shared.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_match_design() -> None:
    p = Policy()
    assert p.ladder == [Level.building, Level.grid, Level.community, Level.street]
    assert p.clock(Level.grid, Priority.urgent).respond == timedelta(minutes=30)
    assert p.clock(Level.street, Priority.normal).resolve == timedelta(days=7)
    assert p.rule(Category.safety_hazard).priority == Priority.urgent
    assert p.rule(Category.dispute_property).start == Level.community
    assert p.next_level(Level.community) == Level.street and p.next_level(Level.street) is None
    assert p.warning_fraction == 0.8 and p.feedback_window == timedelta(days=3)
    assert p.dispatch.max_offers == 5 and p.mediation_norm == timedelta(days=30)


def test_partial_entries_merge_and_seconds_are_allowed(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("clocks:\n  community: {normal: {respond: PT4S}}\ncategories:\n  dispute.neighbour: {start: community}\n")
    p = load_policy(f)
    assert p.clock(Level.community, Priority.normal).respond == timedelta(seconds=4)
    assert p.clock(Level.community, Priority.normal).resolve == timedelta(hours=72)
    assert p.rule(Category.dispute_neighbour).start == Level.community
    assert p.rule(Category.dispute_neighbour).handling == "mediation"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("clocks:\n  grdi: {normal: {respond: PT1H}}\n", "clocks.grdi"),
        ("warning_fraction: 1.5\n", "warning_fraction"),
        ("feedback_window: three days\n", "feedback_window"),
        ("dispatch: {max_offer: 3}\n", "dispatch.max_offer"),
        ("categories:\n  dispute.neighbour: {handling: magic}\n", "categories.dispute.neighbour.handling"),
        ("ladder: [grid, grid]\n", "ladder"),
    ],
)
def test_bad_policy_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    assert named in str(info.value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDCASE_NATS_URL", "nats://n1:4222,nats://n2:4222")
    monkeypatch.setenv("GRIDCASE_MONGODB_URL", "mongodb://m1,m2,m3/?replicaSet=rs0")
    monkeypatch.setenv("GRIDCASE_MAX_DELIVER", "9")
    st = Settings(service="routing")
    assert st.nats_url.startswith("nats://n1") and st.mongodb_url.endswith("rs0")
    assert st.max_deliver == 9 and st.database_name() == "gridcase_routing"
    assert Settings(service="stats").mongodb_url.endswith("rs0")  # a URL given is every service's


def test_default_database_url_is_where_the_embedded_stack_keeps_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDCASE_MONGODB_URL", raising=False)
    ports = {svc: Settings(service=svc).mongodb_url.split(":")[2].split("/")[0] for svc in SERVICES}
    assert ports == {"intake": "27017", "routing": "27017", "mediation": "27018", "dispatch": "27018", "stats": "27018"}


async def test_coalescer_batches_concurrent_submissions_and_isolates_failures() -> None:
    calls: list[list[int]] = []

    async def flush(items):
        calls.append(list(items))
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(flush, max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in range(6)), return_exceptions=True)
    assert len(calls) == 1 and calls[0] == list(range(6))
    assert results[:3] == [0, 10, 20] and isinstance(results[3], ValueError) and results[5] == 50


async def test_coalescer_flushes_at_max_batch_and_propagates_flush_errors() -> None:
    sizes: list[int] = []

    async def flush(items):
        sizes.append(len(items))
        if len(items) == 2:
            raise ConnectionError("db down")
        return list(items)

    c: Coalescer[int, int] = Coalescer(flush, max_batch=4)
    results = await asyncio.gather(*(c.submit(i) for i in range(10)), return_exceptions=True)
    assert sizes == [4, 4, 2]  # one flush at a time: the rest queue behind it
    assert results[:8] == list(range(8))
    assert all(isinstance(r, ConnectionError) for r in results[8:])


class FlushProbe:
    """A flush that takes `delay` and records its batches and the most flushes running at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.running = 0
        self.most = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.running += 1
        self.most = max(self.most, self.running)
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        self.running -= 1
        return list(items)


async def test_group_commit_runs_one_flush_at_a_time_and_batches_what_waits() -> None:
    flush = FlushProbe(0.05)
    c: Coalescer[int, int] = Coalescer(flush, max_batch=100, max_delay=0.001)
    first = [asyncio.create_task(c.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)  # the first flush is running now
    later = [asyncio.create_task(c.submit(i)) for i in range(3, 8)]
    assert await asyncio.gather(*first, *later) == list(range(8))
    assert flush.batches == [[0, 1, 2], [3, 4, 5, 6, 7]] and flush.most == 1


def test_policy_tells_which_cases_a_handling_service_ever_sees() -> None:
    p = Policy()
    assert p.concerns("mediation", "dispute.neighbour") and not p.concerns("mediation", "facility.parking")
    assert p.concerns("dispatch", "help.micro_wish") and not p.concerns("dispatch", "dispute.family")
    assert p.concerns("mediation", "other", assigned="mediation")  # an assignment says so explicitly
    assert not p.concerns("dispatch", "not-a-category")


async def test_submit_many_flushes_the_burst_at_once_in_order() -> None:
    flushed: list[list[int]] = []

    async def flush(items):
        flushed.append(list(items))
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(flush, max_batch=100, max_delay=60.0)  # no timer would fire
    results = await asyncio.wait_for(c.submit_many([1, 2, 3]), timeout=2)
    assert results == [10, 20, 30]
    assert flushed == [[1, 2, 3]]
    assert await c.submit_many([]) == []


async def test_min_interval_spaces_flushes_and_drain_still_flushes_at_once() -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def flush(items):
        starts.append(loop.time())
        return list(items)

    c: Coalescer[int, int] = Coalescer(flush, max_batch=100, max_delay=0.001, min_interval=0.2)
    assert await c.submit(1) == 1
    second = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0.05)
    assert not second.done()  # held back: the last flush started less than 0.2 s ago
    assert await second == 2
    assert starts[1] - starts[0] >= 0.19
    # a full batch does not wait, and drain flushes what waits without waiting out the interval
    assert await asyncio.wait_for(c.submit_many(list(range(100))), timeout=0.1) == list(range(100))
    third = asyncio.create_task(c.submit(3))
    await asyncio.sleep(0)
    await asyncio.wait_for(c.drain(), timeout=0.1)
    assert third.done() and third.result() == 3


def test_claims_split_keeps_each_keys_order() -> None:
    claims = KeyClaims()
    claims._held.add("k1")  # a write in flight holds k1
    # item 1 waits on k1; item 3 shares k2 with waiting item 1, so it waits too (order per key)
    now, later = claims.split([{"a"}, {"k1", "k2"}, {"b"}, {"k2"}, {"c", "a"}])
    assert now == [0, 2, 4] and later == [1, 3]


async def test_group_commits_in_flight_never_hold_the_same_key() -> None:
    """Three flushes in flight (as intake runs them): no key is ever written by two at once,
    and each key's items are written in submission order."""
    claims = KeyClaims()
    writing: set[str] = set()
    written: list[tuple[str, int]] = []
    overlaps = 0

    async def write(part: list[tuple[str, int]]) -> list[None]:
        nonlocal overlaps
        keys = {k for k, _ in part}
        overlaps += bool(writing)
        assert not keys & writing
        writing.update(keys)
        await asyncio.sleep(0.002)
        writing.difference_update(keys)
        written.extend(part)
        return [None] * len(part)

    async def flush(items: list[tuple[str, int]]) -> list[None]:
        return await claims.write_apart(items, lambda item: (item[0],), write)

    co: Coalescer[tuple[str, int], None] = Coalescer(flush, max_batch=4, max_delay=0.0005, inflight=3)
    items = [(f"k{i % 5}", i) for i in range(60)]
    for chunk in range(0, 60, 6):
        await asyncio.gather(*(co.submit(it) for it in items[chunk : chunk + 6]))
    await asyncio.gather(*(co.submit(it) for it in [(f"x{i % 7}", 100 + i) for i in range(70)]))
    assert sorted(written) == sorted(items + [(f"x{i % 7}", 100 + i) for i in range(70)])
    for key in {k for k, _ in written}:
        seq = [n for k, n in written if k == key]
        assert seq == sorted(seq)
    assert overlaps > 0  # the flushes did run side by side


async def test_a_trickle_is_written_one_flush_at_a_time_and_a_backlog_by_several() -> None:
    flush = FlushProbe(0.01)
    co: Coalescer[int, int] = Coalescer(flush, max_batch=50, max_delay=0.0005, inflight=3, parallel_from=20)
    trickle = []
    for i in range(30):  # one item every 3 ms: several arrive during each 10 ms flush
        trickle.append(asyncio.ensure_future(co.submit(i)))
        await asyncio.sleep(0.003)
    await asyncio.gather(*trickle)
    assert flush.most == 1 and max(map(len, flush.batches)) > 1  # group-committed, one flush at a time

    flush.most, flush.batches = 0, []
    await asyncio.gather(*(co.submit(i) for i in range(200)))  # a backlog
    assert flush.most == 3 and len(flush.batches) == 4


async def test_a_waiting_item_keeps_its_place_for_every_key_it_has() -> None:
    """B waits for J (held by A); C, handed over after B, needs only K — which B needs too.
    C must not write K before B does."""
    claims = KeyClaims()
    gate = asyncio.Event()
    order: list[str] = []

    async def write(part: list[tuple[set[str], str]]) -> list[None]:
        if any(name == "a" for _, name in part):
            await gate.wait()
        order.extend(name for _, name in part)
        return [None] * len(part)

    def run(keys: set[str], name: str) -> asyncio.Task[list[None]]:
        return asyncio.ensure_future(claims.write_apart([(keys, name)], lambda item: item[0], write))

    a = run({"J"}, "a")
    await asyncio.sleep(0)  # A holds J
    b = run({"J", "K"}, "b")
    await asyncio.sleep(0)  # B waits for J
    c = run({"K"}, "c")
    await asyncio.sleep(0.01)
    assert order == []  # C waits behind B although nobody holds K
    gate.set()
    await asyncio.gather(a, b, c)
    assert order == ["a", "b", "c"]
