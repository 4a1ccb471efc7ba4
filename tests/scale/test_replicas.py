"""Horizontal scale (issue 9): two replicas of every service against one stack.

Driven through the contract only (reports on `gridcase.intake.report.v1`, commands on
`gridcase.cmd.*`, the stats HTTP API of each stats replica), with a seconds-scale policy so
that every case escalates and mediation and dispatch timers fire:

- every report becomes one case (platform retries included);
- every due escalation happens once (per case and level);
- one mediation dossier is opened per (case, level) and its overdue timer fails it once;
- one dispatch task is opened per (case, level); each offer is made, and expires, once;
  concurrent claims of an open claim have one winner; completions resolve each case once;
- the two stats replicas are independent instances (`GRIDCASE_INSTANCE`): each reads every
  event through durables of its own into a database of its own, and both count each case once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from nats.js.errors import NotFoundError

from shared.app import Runtime, build_app
from shared.contract import subjects as s
from shared.contract.catalogue import is_newer_copy
from shared.db import make_client
from shared.settings import Settings

from ..support import (
    command,
    connect,
    eventually,
    publish,
    report,
    running,
    service_settings,
    small_directory,
    stream_messages,
)

pytestmark = pytest.mark.integration

# grid: respond in 1 s, so every case escalates to community at once; community: never within
# the test, except through mediation (norm 20 s → failed) and dispatch (two offers of 10 s →
# unfilled). Grid-level dossiers and tasks outlive the grid escalation by 19 s, so they end
# superseded/cancelled unless mediation or dispatch lag that far behind routing (a loaded
# 2-core machine runs ten services, nats-server and a single-threaded SecantusDB here).
POLICY = """
clocks:
  grid: {normal: {respond: PT1S, resolve: PT1H}}
  community: {normal: {respond: PT1H, resolve: PT2H}}
mediation_norm: PT20S
dispatch: {offer_ttl: PT10S, max_offers: 2}
"""

DIRECT, MEDIATION, HOME, WISH = "facility.parking", "dispute.neighbour", "help.home_service", "help.micro_wish"
MIX = {DIRECT: 36, MEDIATION: 24, HOME: 24, WISH: 12}
STATS_INSTANCES = ("stats-0", "stats-1")
SERVICES = ("routing", "intake", "mediation", "dispatch")


def case_report(i: int, category: str, grid: str) -> dict[str, Any]:
    data = report(f"scale-{i}", grid=grid, category=category)
    if category == MEDIATION:
        data["parties"] = [
            {"role": "applicant", "name": "测试当事人甲（虚构）", "language": "zh"},
            {"role": "respondent", "language": "mn"},
        ]
    if category == HOME:
        data["needs"] = {"skills": ["elderly_care"], "people": 1}
    return data


def volunteers(communities: int) -> list[dict[str, Any]]:
    """Three per community, room for every offer of the test at once."""
    return [
        {
            "id": f"v-c{c}-{k}",
            "name": "示例·志愿者（虚构）",
            "community": f"c{c}",
            "grid": f"c{c}-g{k % 2 + 1}",
            "skills": ["elderly_care"],
            "languages": ["zh"],
            "max_tasks": 50,
        }
        for c in range(1, communities + 1)
        for k in range(1, 4)
    ]


@asynccontextmanager
async def serving(service: str, settings: Settings) -> AsyncIterator[Runtime]:
    """A service with its HTTP API on `settings.http_port` (uvicorn, as in a container)."""
    app, rt = build_app(service, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.http_port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), timeout=60, what=f"{service} HTTP server")
        assert not task.done(), f"{service} failed to start"
        yield rt
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


async def events(js, stream: str, subject: str) -> list[dict[str, Any]]:
    return [json.loads(m.data)["data"] for m in await stream_messages(js, stream, subject)]


def case_ids_by_category(received: list[dict[str, Any]]) -> dict[str, str]:
    return {d["case_id"]: d["category"] for d in received}


@pytest.mark.timeout(420)
async def test_two_replicas_of_each_service(nats_url: str, mongodb_url: str, db_prefix: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    nc = await connect(nats_url)
    js = nc.jetstream()

    def settings(service: str, **over: Any) -> Settings:
        return service_settings(service, nats_url, mongodb_url, db_prefix, policy_file=policy, data_dir=tmp_path, **over)

    async with AsyncExitStack() as stack:
        runtimes: dict[str, list[Runtime]] = defaultdict(list)
        for service in SERVICES:
            for _ in range(2):
                runtimes[service].append(await stack.enter_async_context(running(service, settings(service))))
        stats_http = []
        for instance in STATS_INSTANCES:
            st = settings("stats", instance=instance, timer_poll_s=0.25)
            runtimes["stats"].append(await stack.enter_async_context(serving("stats", st)))
            stats_http.append(f"http://127.0.0.1:{st.http_port}")

        # ---- each stats replica reads through durables and a database of its own ----
        for instance in STATS_INSTANCES:
            for stream, durable in s.SERVICE_ACCESS["stats"].durables_of(instance):
                assert (await js.consumer_info(stream, durable)).config.durable_name == durable
        for stream, durable in s.SERVICE_ACCESS["stats"].durables:
            with pytest.raises(NotFoundError):  # the unsuffixed durables of a single instance are unused
                await js.consumer_info(stream, durable)
        assert {rt.db.name for rt in runtimes["stats"]} == {f"{db_prefix}_stats_{i}" for i in STATS_INSTANCES}
        assert {rt.db.name for rt in runtimes["routing"]} == {f"{db_prefix}_routing"}

        directory = small_directory(communities=2, grids=2, buildings=3)
        loaded = await command(nc, s.DIRECTORY_LOAD, directory)
        assert loaded["ok"], loaded
        # One intake replica consumes `directory.changed`; the other reads the directory from
        # the store within 5 s (its refresh). Reports located before that would go to triage.
        await eventually(
            lambda: len({rt.intake.directory.version for rt in runtimes["intake"]} - {0}) == 1  # type: ignore[attr-defined]
            and all(rt.intake.directory.version for rt in runtimes["intake"]),  # type: ignore[attr-defined]
            timeout=15,
            what="both intake replicas know the directory",
        )
        for v in volunteers(2):
            reply = await command(nc, s.command("dispatch", "register_volunteer"), {"volunteer": v})
            assert reply["ok"], reply
        # Registration is answered by one dispatch replica; the other hears it at once
        # (`volunteer_registered` on a core subscription), not at its next registry refresh.
        await eventually(
            lambda: all(len(rt.dispatch.registry) == 6 for rt in runtimes["dispatch"]),  # type: ignore[attr-defined]
            timeout=10,
            what="both dispatch replicas know every volunteer",
        )

        grids = [g["code"] for g in directory["grids"]]
        plan = [cat for cat, k in MIX.items() for _ in range(k)]
        n = len(plan)
        for i, category in enumerate(plan):
            await publish(js, s.INTAKE_REPORT, case_report(i, category, grids[i % len(grids)]))
        for i in range(0, n, 6):  # platform retries with new envelopes: same (channel, external_id)
            await publish(js, s.INTAKE_REPORT, case_report(i, plan[i], grids[i % len(grids)]))

        # ---- every report → one case ----
        async def all_received():
            got = await events(js, "GRIDCASE_CASES", s.case_event("received"))
            return got if len(got) >= n else None

        received = await eventually(all_received, timeout=120, interval=0.5, what="every report received")
        by_external = Counter(d["external_id"] for d in received)
        assert len(by_external) == n and set(by_external.values()) == {1}, "a report became two cases, or none"
        category_of = case_ids_by_category(received)
        community_of = {d["case_id"]: d["scope"]["community"] for d in received}
        cases_of = defaultdict(list)
        for cid, cat in category_of.items():
            cases_of[cat].append(cid)

        # ---- micro-wishes: two volunteers claim each community-level open claim at once ----
        # Which task dispatch opened for which level is in its record of the case (events do
        # not name the level). A case's `assigned` events may reach the two dispatch replicas
        # out of order: a grid assignment handled after the community one is stale and opens
        # nothing, so a case has one task per level it was assigned to dispatch at, or fewer.
        dispatch_store = runtimes["dispatch"][0].dispatch.store  # type: ignore[attr-defined]

        async def task_levels(case_ids: list[str]) -> dict[str, dict[str, str]]:
            infos = await asyncio.gather(*(dispatch_store.get_case(c) for c in case_ids))
            return {i.case_id: {lv: ref["task_id"] for lv, ref in i.tasks.items()} for i in infos}

        async def community_claims():
            levels = await task_levels(cases_of[WISH])
            ready = {c: lv["community"] for c, lv in levels.items() if "community" in lv}
            progress["wish tasks at community"] = len(ready)
            return ready if len(ready) == len(cases_of[WISH]) else None

        progress: dict[str, Any] = {}
        try:
            claims = await eventually(community_claims, timeout=120, interval=0.5, what="micro-wish tasks at community")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {progress}") from None
        winners: dict[str, str] = {}
        for cid, task_id in claims.items():
            community = community_of[cid]
            rivals = [f"v-{community}-1", f"v-{community}-2"]
            replies = await asyncio.gather(
                *(command(nc, s.command("dispatch", "claim"), {"task_id": task_id, "volunteer": v}) for v in rivals)
            )
            ok = [v for v, r in zip(rivals, replies, strict=True) if r["ok"]]
            assert len(ok) == 1, f"{task_id}: claims {replies}"
            loser = next(r for r in replies if not r["ok"])
            assert loser["error"]["code"] == "taken", loser
            winners[task_id] = ok[0]
        for task_id, volunteer in winners.items():
            reply = await command(nc, s.command("dispatch", "complete"), {"task_id": task_id, "volunteer": volunteer, "hours": 1.5})
            assert reply["ok"], reply

        # ---- wait for every due escalation: grid → community for all; then community →
        # street for mediation (dossier overdue → failed) and home services (offers expired →
        # unfilled) ----
        expected_escalations = n + len(cases_of[MEDIATION]) + len(cases_of[HOME])

        async def escalations():
            got = await events(js, "GRIDCASE_CASES", s.case_event("escalated"))
            resolved = await events(js, "GRIDCASE_CASES", s.case_event("resolved"))
            progress.update(escalated=len(got), resolved=len(resolved))
            return (got, resolved) if len(got) >= expected_escalations and len(resolved) >= len(cases_of[WISH]) else None

        try:
            escalated, resolved = await eventually(escalations, timeout=150, interval=1.0, what="every due escalation")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {progress}, expected {expected_escalations} escalations") from None
        await asyncio.sleep(3)  # anything doubled would show up by now
        escalated = await events(js, "GRIDCASE_CASES", s.case_event("escalated"))
        resolved = await events(js, "GRIDCASE_CASES", s.case_event("resolved"))
        assigned = await events(js, "GRIDCASE_CASES", s.case_event("assigned"))

        # ---- every due escalation exactly once: per case, once from each level it left ----
        # Under load the routing timers may lag: a grid-level dossier can then reach its norm
        # before the grid escalation (the case leaves grid on `mediation_failed` instead of
        # `respond_overdue`). Either way each level is left once.
        per_case_esc: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for d in escalated:
            per_case_esc[d["case_id"]][d["from_level"]].append(d["reason"])
        allowed = {
            DIRECT: {"grid": {"respond_overdue"}},
            WISH: {"grid": {"respond_overdue"}},
            MEDIATION: {"grid": {"respond_overdue", "mediation_failed"}, "community": {"mediation_failed"}},
            HOME: {"grid": {"respond_overdue"}, "community": {"dispatch_unfilled"}},
        }

        def escalated_as_due(cid: str) -> bool:
            rule, got = allowed[category_of[cid]], per_case_esc[cid]
            return set(got) == set(rule) and all(len(got[lv]) == 1 and got[lv][0] in rule[lv] for lv in rule)

        wrong = [c for c in category_of if not escalated_as_due(c)]
        if wrong:
            detail = [(category_of[c], dict(per_case_esc[c])) for c in wrong[:5]]
            raise AssertionError(f"{len(wrong)} cases not escalated once per due clock: {detail}\n{await timelines(js, set(wrong[:3]))}")
        assert len(escalated) == expected_escalations
        assert Counter(d["case_id"] for d in resolved) == Counter(cases_of[WISH]), "a completion resolved twice, or not at all"

        # ---- mediation: one dossier per (case, level); each overdue timer fails it once ----
        # (a grid assignment reaching mediation after the community one opens nothing: stale)
        med_levels = {(d["case_id"], d["level"]) for d in assigned if d["handling"] == "mediation"}
        opened = Counter((d["case_id"], d["level"]) for d in await events(js, "GRIDCASE_MEDIATION", s.mediation_event("opened")))
        assert set(opened.values()) == {1}, f"a dossier was opened twice for a (case, level): {opened.most_common(3)}"
        assert set(opened) <= med_levels and {(c, "community") for c in cases_of[MEDIATION]} <= set(opened)
        failed = await events(js, "GRIDCASE_MEDIATION", s.mediation_event("failed"))
        assert {d["reason"] for d in failed} == {"overdue"}
        assert set(Counter(d["mediation_id"] for d in failed).values()) == {1}, "an overdue dossier failed twice"
        failed_at = Counter((d["case_id"], d["level"]) for d in failed)
        assert {(c, "community") for c in cases_of[MEDIATION]} <= set(failed_at)
        # the case left each level once, whichever came first: its respond clock or the norm (a
        # grid dossier superseded late may fail after the case left grid: routing ignores that)
        assert {(d["case_id"], d["from_level"]) for d in escalated if d["reason"] == "mediation_failed"} <= set(failed_at)
        assert_versions_once(await stream_messages(js, "GRIDCASE_MEDIATION"), "mediation_id")

        # ---- dispatch: one task per (case, level); each offer made, and expired, once ----
        # each `unfilled` also comes as `unfilled.v2` (same version): the v1 copies tell the story
        dispatch_msgs = [m for m in await stream_messages(js, "GRIDCASE_DISPATCH") if not is_newer_copy(m.subject)]
        assert_versions_once(dispatch_msgs, "task_id")
        history: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)  # task → events in order
        for m in dispatch_msgs:
            d = json.loads(m.data)["data"]
            if d.get("task_id"):
                history[d["task_id"]].append((m.subject.split(".")[2], d))
        for h in history.values():
            h.sort(key=lambda e: e[1]["version"])
        levels = await task_levels(cases_of[HOME] + cases_of[WISH])
        opened_by_case: dict[str, set[str]] = defaultdict(set)
        for task_id, h in history.items():
            assert h[0][0] == "task_opened", h
            opened_by_case[h[0][1]["case_id"]].add(task_id)
            assert [n_ for n_, _ in h].count("task_opened") == 1, f"{task_id} opened twice: {h}"
        # every task opened is the one task dispatch keeps for its (case, level)
        assert {c: ts for c, ts in opened_by_case.items()} == {c: set(lv.values()) for c, lv in levels.items()}
        dis_levels = {(d["case_id"], d["level"]) for d in assigned if d["handling"] == "dispatch"}
        assert {(c, lv) for c, lvs in levels.items() for lv in lvs} <= dis_levels
        missing = [c for c, lvs in levels.items() if "community" not in lvs]
        assert not missing, f"no community task: {[(c, levels[c]) for c in missing]}\n{await timelines(js, set(missing[:3]))}"

        def names(task_id: str) -> Counter:
            return Counter(name for name, _ in history[task_id])

        for task_id, h in history.items():
            for name in ("offered", "expired"):
                per_volunteer = Counter(d["volunteer"] for n_, d in h if n_ == name)
                assert set(per_volunteer.values()) <= {1}, f"{task_id}: an offer {name} twice: {h}"
        for cid in cases_of[HOME]:
            g = names(levels[cid]["grid"]) if "grid" in levels[cid] else None
            c = names(levels[cid]["community"])
            # grid: superseded by the escalation, its outstanding offer withdrawn (an earlier one
            # may have expired if the escalation lagged); community: two offers expire: unfilled
            if (g is not None and not (g["cancelled"] == 1 and g["offered"] == g["expired"] + 1 and not g["unfilled"])) or (
                (c["offered"], c["expired"], c["unfilled"], c["cancelled"]) != (2, 2, 1, 0)
                or history[levels[cid]["community"]][-1][1]["reason"] != "offers_exhausted"
            ):
                raise AssertionError(f"home service {cid}: grid {g}, community {c}\n{await timelines(js, {cid})}")
        for cid in cases_of[WISH]:
            if "grid" in levels[cid]:
                assert names(levels[cid]["grid"]) == Counter({"task_opened": 1, "cancelled": 1}), history[levels[cid]["grid"]]
            community_task = levels[cid]["community"]
            assert community_task in winners
            assert names(community_task) == Counter({"task_opened": 1, "accepted": 1, "completed": 1}), history[community_task]

        # ---- stats: each instance counts each case once, and they agree ----
        async def totals_of(url: str) -> dict[str, Any] | None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                got = (await http.get("/api/kpis", params={"from": "2026-01-01", "to": "2100-01-01"})).json()
            t = got.get("totals", {})
            done = t.get("received") == n and t.get("escalated") == n and t.get("resolved") == len(cases_of[WISH])
            return t if done else None

        totals = [await eventually(lambda url=url: totals_of(url), timeout=90, interval=0.5, what=f"stats at {url} caught up")
                  for url in stats_http]
        assert totals[0] == totals[1], "the stats instances disagree"
        assert totals[0]["assigned"] == n and totals[0]["resolved"] == len(cases_of[WISH])
        queried = await command(nc, s.STATS_QUERY, {"from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
        assert queried["totals"] == totals[0]  # whichever instance answers the command
        async with httpx.AsyncClient(timeout=10) as http:
            overviews = [(await http.get(f"{url}/api/overview")).json() for url in stats_http]
        assert overviews[0]["mediation"] == overviews[1]["mediation"]
        assert overviews[0]["mediation"]["opened"] == len(opened)
    await nc.close()


async def timelines(js, case_ids: set[str]) -> str:
    """What happened to some cases, in stream order, for a failure message."""
    lines = []
    for stream in ("GRIDCASE_CASES", "GRIDCASE_MEDIATION", "GRIDCASE_DISPATCH"):
        for m in await stream_messages(js, stream):
            env = json.loads(m.data)
            d = env["data"]
            if d.get("case_id") in case_ids:
                detail = {k: d[k] for k in ("version", "level", "from_level", "reason", "volunteer", "mediation_id", "task_id") if k in d}
                lines.append(f"{d['case_id'][-6:]} {env['time'][11:23]} {m.subject.split('.', 2)[2]} {detail}")
    return "\n".join(sorted(lines, key=lambda x: x.split()[1]))


def assert_versions_once(msgs: list[Any], key: str) -> None:
    """Per aggregate, event versions 1..k each exactly once: nothing was emitted twice by two
    replicas deciding the same thing (volunteer registrations carry no aggregate)."""
    versions: dict[str, list[int]] = defaultdict(list)
    for m in msgs:
        data = json.loads(m.data)["data"]
        if data.get(key):
            versions[data[key]].append(data["version"])
    bad = {k: sorted(v) for k, v in versions.items() if sorted(v) != list(range(1, len(v) + 1))}
    assert not bad, f"{len(bad)} aggregates with doubled or missing versions: {list(bad.items())[:3]}"


@pytest.mark.timeout(180)
async def test_stats_rebuild_targets_one_instance(nats_url: str, mongodb_url: str, db_prefix: str, tmp_path: Path) -> None:
    """`gridcase stats rebuild --instance` (or GRIDCASE_INSTANCE) rebuilds that instance's database only."""
    from services.stats.cli import main as stats_cli

    nc = await connect(nats_url)
    js = nc.jetstream()

    def settings(service: str, **over: Any) -> Settings:
        return service_settings(service, nats_url, mongodb_url, db_prefix, data_dir=tmp_path, **over)

    async with AsyncExitStack() as stack:
        for service in ("routing", "intake"):
            await stack.enter_async_context(running(service, settings(service)))
        stats = [await stack.enter_async_context(running("stats", settings("stats", instance=i))) for i in STATS_INSTANCES]
        assert (await command(nc, s.DIRECTORY_LOAD, small_directory(1, 1, 1)))["ok"]
        for i in range(12):
            await publish(js, s.INTAKE_REPORT, report(f"rb-{i}", grid="c1-g1"))

        async def counted():
            facts = [await rt.db["facts"].count_documents({}) for rt in stats]
            return facts if facts == [12, 12] else None

        await eventually(counted, timeout=60, interval=0.3, what="both stats instances counted every case")
        argv = ["rebuild", "--nats-url", nats_url, "--mongodb-url", mongodb_url, "--database-prefix", db_prefix]
        code = await asyncio.to_thread(stats_cli, [*argv, "--instance", "stats-1"])
        assert code == 0
        generations = [await rt.db["meta"].find_one({"_id": "generation"}) for rt in stats]
        assert generations[0] is None and generations[1]["n"] == 1, generations
        assert await stats[1].db["facts"].count_documents({}) == 12
        # the unsuffixed database of a single instance was neither touched nor created
        client = make_client(mongodb_url)
        try:
            assert f"{db_prefix}_stats" not in await client.list_database_names()
        finally:
            await client.close()
    await nc.close()
