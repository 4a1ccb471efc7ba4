"""Adapter points to the services' own code for scenarios 4 and 5 (looked up at run time).

Scenario 4 (stats query speed) needs a bulk loader of synthetic facts, because feeding a
million cases through the event pipeline does not fit the time budget:

    # services/stats/bench_support.py
    async def load_synthetic(db, n: int) -> None | dict   # db: AsyncDatabase gridcase_<prefix>_stats
    # or: async def load_synthetic(rt: Runtime, n: int)  (first parameter named rt/runtime)

It must write the projections exactly as the stats consumers would for `n` cases spread over
communities/grids/categories/channels/levels/days, so `/api/kpis` answers over them. A sync
function is accepted too.

Scenario 5 (dispatch matching) needs the matcher with a synthetic registry:

    # services/dispatch/bench_support.py
    def make_matcher(n_volunteers: int) -> Callable[[int], object]
        # builds n volunteers in memory (domain objects, no I/O) and returns a function that
        # runs ONE match for synthetic task number i (varied skills/grid/language), as the
        # dispatch service does when it makes an offer. May be async (returns an awaitable).

Without the hook, `services.dispatch.domain` is searched for a matcher-like function
(`match…`, `rank…`, `candidates…`, `choose…`, `select…`, `pick…`, `next_volunteer…`)
and called with synthetic contract `Volunteer`s if its signature allows; otherwise the row
says "not available" and names what was found.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any


def _import(name: str) -> tuple[Any | None, str]:
    try:
        return importlib.import_module(name), ""
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None, f"{name} does not exist yet"
        return None, f"{name} failed to import: {exc}"
    except Exception as exc:
        return None, f"{name} failed to import: {type(exc).__name__}: {exc}"


# ---- scenario 4 ---------------------------------------------------------------------------------
def stats_loader() -> tuple[Callable[..., Any] | None, str]:
    mod, why = _import("services.stats.bench_support")
    if mod is None:
        return None, why
    fn = getattr(mod, "load_synthetic", None)
    if not callable(fn):
        return None, "services.stats.bench_support has no load_synthetic(db_or_rt, n)"
    return fn, "services.stats.bench_support.load_synthetic"


def wants_runtime(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    p = params[0]
    return p.name in ("rt", "runtime") or "Runtime" in str(p.annotation)


async def load_stats(fn: Callable[..., Any], nats_url: str, mongodb_url: str, prefix: str, n: int) -> Any:
    """Call the stats loader with a database or a (not started) stats Runtime."""
    if wants_runtime(fn):
        from shared.app import build_app
        from shared.settings import Settings

        settings = Settings(service="stats", nats_url=nats_url, mongodb_url=mongodb_url, database_prefix=prefix)
        _, rt = build_app("stats", settings)
        try:
            await rt.indexes.apply(rt.db)
            res = fn(rt, n)
            return await res if inspect.isawaitable(res) else res
        finally:
            await rt.mongo.close()
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(mongodb_url, tz_aware=True, serverSelectionTimeoutMS=10_000)
    try:
        res = fn(client[f"{prefix}_stats"], n)
        return await res if inspect.isawaitable(res) else res
    finally:
        await client.close()


# ---- scenario 5 ---------------------------------------------------------------------------------
MATCHER_WORDS = ("match", "rank", "candidate", "choose", "select", "pick", "next_volunteer", "best_volunteer")


# Issue 6 asks for matching "with 10,000 registered volunteers in a community": every one of
# them is in the community the needs come from, spread over its grids.
MATCH_COMMUNITY = "c0"


def synthetic_volunteers(n: int) -> list[Any]:
    from shared.contract.dispatch import Volunteer

    skills = ["escort", "shopping", "repair", "cleaning", "translation", "medical_escort", "tutoring", "cooking", "it_help", "legal"]
    out = []
    for i in range(n):
        c = MATCH_COMMUNITY
        out.append(
            Volunteer(
                id=f"v{i}",
                name=f"V{i}",
                community=c,
                grid=f"{c}-g{i % 11}",
                skills=[skills[i % len(skills)], skills[(i * 7) % len(skills)]],
                languages=["zh"] if i % 3 else ["zh", "mn"],
                max_tasks=2,
            )
        )
    return out


def dispatch_matcher(n: int) -> tuple[Callable[[int], Any] | None, str]:
    mod, why = _import("services.dispatch.bench_support")
    if mod is not None and callable(getattr(mod, "make_matcher", None)):
        return mod.make_matcher(n), "services.dispatch.bench_support.make_matcher"
    dom, dwhy = _import("services.dispatch.domain")
    if dom is None:
        return None, f"{why}; {dwhy}"
    known = _registry_matcher(dom, n)
    if known is not None:
        return known, "services.dispatch.domain Matcher.best(Need, now, k=1) over Registry"
    found = [
        name for name, obj in vars(dom).items()
        if callable(obj) and not inspect.isclass(obj) and getattr(obj, "__module__", "") == dom.__name__
        and any(w in name.lower() for w in MATCHER_WORDS)
    ]
    if not found:
        return None, "services.dispatch.domain exposes no matcher; add services/dispatch/bench_support.py make_matcher(n)"
    vols = synthetic_volunteers(n)
    for name in found:
        fn = getattr(dom, name)
        call = _guess_call(fn, vols)
        if call is not None:
            return call, f"services.dispatch.domain.{name} (guessed call)"
    return None, f"found {', '.join(found)} in services.dispatch.domain but could not call it with synthetic volunteers; add bench_support.make_matcher(n)"


def _registry_matcher(dom: Any, n: int) -> Callable[[int], Any] | None:
    """The dispatch domain's own shape: Registry of VolunteerState, Matcher(registry).best(Need, now=, k=)."""
    from datetime import UTC, datetime, timedelta

    try:
        registry = dom.Registry()
        now = datetime.now(UTC)
        for i, v in enumerate(synthetic_volunteers(n)):
            state = dom.VolunteerState.from_volunteer(v)
            if i % 3 == 0:  # some volunteers have hours in the window: the ranking has work to do
                state.credit(now - timedelta(days=i % 40), 1.0 + i % 4)
            registry.upsert(state)
        matcher = dom.Matcher(registry)
        skills = ["escort", "shopping", "repair", "cleaning", "translation"]

        def need(i: int) -> Any:
            c = MATCH_COMMUNITY
            return dom.Need(
                community=c,
                grid=f"{c}-g{i % 11}",
                skills=(skills[i % len(skills)],) if i % 4 else (),
                languages=frozenset({"mn"}) if i % 5 == 0 else frozenset(),
            )

        def one(i: int) -> Any:
            return matcher.best(need(i), now=datetime.now(UTC), k=1 if i % 10 else 3, exclude=(f"v{i}",))

        if not one(1):
            return None
        return one
    except Exception:
        return None


def _guess_call(fn: Callable[..., Any], vols: list[Any]) -> Callable[[int], Any] | None:
    from datetime import UTC, datetime

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    skills = ["escort", "repair", "translation"]

    def args_for(i: int) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for p in params.values():
            lname = p.name.lower()
            if any(w in lname for w in ("volunteer", "registry", "candidate", "pool")):
                out[p.name] = vols
            elif "skill" in lname:
                out[p.name] = [skills[i % 3]]
            elif "grid" in lname:
                out[p.name] = f"c{i % 8}-g{i % 11}"
            elif "community" in lname:
                out[p.name] = f"c{i % 8}"
            elif "language" in lname:
                out[p.name] = "mn" if i % 5 == 0 else "zh"
            elif lname in ("now", "at"):
                out[p.name] = datetime.now(UTC)
            elif p.default is inspect.Parameter.empty:
                return None
        return out

    kw = args_for(0)
    if kw is None:
        return None
    try:
        fn(**kw)
    except Exception:
        return None
    return lambda i: fn(**(args_for(i) or {}))
