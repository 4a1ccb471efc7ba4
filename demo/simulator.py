"""Demo traffic: city platforms and the people on the ground, through the public contract only.

The simulator publishes residents' reports on `gridcase.intake.report.v1` (JetStream, with
`Nats-Msg-Id`), registers volunteers, and watches `gridcase.case.>`, `gridcase.mediation.>`
and `gridcase.dispatch.>` to act as grid workers, mediators, volunteers and the 12345
follow-up desk by sending the commands of DESIGN §3. It imports nothing from `services/`.

It only acts on cases it created itself (their `external_id` carries its run tag), so it can
run beside other traffic. All delays are divided by `speed`; most are drawn as fractions of
the clocks the events announce (`respond_by`, `resolve_by`, `due_by`, `expires_at`), so the
same simulator fits the minutes policy (demo/policy-minutes.yaml) and a seconds policy.
Nothing personal is logged or printed: counts only.

    gridcase simulate --rate 2 --duration 600 --seed 7 --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.contract import Envelope
from shared.contract import subjects as s
from shared.contract.catalogue import is_newer_copy
from shared.contract.directory import Directory

from . import scenarios as sc

DEFAULT_DIRECTORY = Path(__file__).with_name("directory.yaml")
COMMAND_TIMEOUT_S = 5.0
FOLLOW_UP_DESK = "desk-12345"
SOURCE = "/demo/simulator"
_CN_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


def load_directory(path: str | os.PathLike[str] | None = None) -> Directory:
    """The demo directory (demo/directory.yaml unless another file is named)."""
    with open(path or DEFAULT_DIRECTORY, encoding="utf-8") as fh:
        return Directory.model_validate(yaml.safe_load(fh))


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ---- the directory, indexed ---------------------------------------------------------------


class DirectoryIndex:
    """Look-ups the simulated people need: who works where, which buildings a grid has."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.communities = [c.code for c in directory.communities]
        self.community_name = {c.code: c.name for c in directory.communities}
        self.grids_of: dict[str, list[str]] = {c: [] for c in self.communities}
        self.grid_community: dict[str, str] = {}
        for g in directory.grids:
            self.grids_of.setdefault(g.community, []).append(g.code)
            self.grid_community[g.code] = g.community
        self.buildings_of: dict[str, list[Any]] = {}
        for b in directory.buildings:
            self.buildings_of.setdefault(b.grid, []).append(b)
        self.staff_by_role: dict[tuple[str, str], list[Any]] = {}
        for st in directory.staff:
            if st.active:
                self.staff_by_role.setdefault((str(st.role), st.unit), []).append(st)
        self.located_grids = [g for g in self.grid_community if self.buildings_of.get(g)]

    def staff(self, role: str, unit: str | None) -> list[Any]:
        return self.staff_by_role.get((role, unit or ""), [])

    def community_of_grid(self, grid: str | None) -> str | None:
        return self.grid_community.get(grid or "")


# ---- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """One report the platforms send: new, an exact repeat, or a deliberately invalid one."""

    data: dict[str, Any]
    kind: Literal["new", "repeat", "invalid"] = "new"
    same_envelope: bool = False  # a repeat re-sent as the very same message (same envelope id)

    @property
    def key(self) -> tuple[Any, Any]:
        return self.data.get("channel"), self.data.get("external_id")


_CHANNEL_ABBR = {
    "hotline_12345": "hl",
    "wechat": "wx",
    "service_window": "sw",
    "grid_patrol": "gp",
    "mini_program": "mp",
    "micro_wish": "mw",
}


class ReportFactory:
    """Pure generator of report `data` dicts (DESIGN §3), deterministic for an `rng` seed.

    About 3 % of draws repeat an earlier report exactly (same channel/external_id; two in
    three re-send the same envelope, the rest a fresh envelope) and about 1 % are invalid.
    """

    def __init__(
        self,
        directory: Directory,
        rng: random.Random,
        *,
        run_tag: str = "demo",
        clock: Callable[[], datetime] | None = None,
        repeat_share: float = 0.03,
        invalid_share: float = 0.01,
    ) -> None:
        self.index = DirectoryIndex(directory)
        self.rng = rng
        self.run_tag = run_tag
        self.clock = clock or (lambda: datetime.now(UTC))
        self.repeat_share = repeat_share
        self.invalid_share = invalid_share
        self.count = 0
        self._history: list[dict[str, Any]] = []
        self._phone_no = 0

    @property
    def external_prefix(self) -> str:
        return f"sim-{self.run_tag}-"

    def next(self) -> Draw:
        r = self.rng.random()
        if r < self.repeat_share and self._history:
            data = self.rng.choice(self._history)
            return Draw(json.loads(json.dumps(data)), "repeat", self.rng.random() < 2 / 3)
        data = self._report()
        if r < self.repeat_share + self.invalid_share:
            return Draw(self._spoil(data), "invalid")
        self._history.append(data)
        if len(self._history) > 500:
            self._history.pop(0)
        return Draw(json.loads(json.dumps(data)), "new")

    # -- pieces --------------------------------------------------------------------------

    def _phone(self) -> str:
        self._phone_no = (self._phone_no + 1) % 10000
        return f"1380000{self._phone_no:04d}"

    def _report(self) -> dict[str, Any]:
        rng = self.rng
        self.count += 1
        channel = _weighted(rng, sc.CHANNEL_WEIGHTS)
        category = _weighted(rng, sc.CATEGORY_MIX[channel])
        title, description, skills = rng.choice(sc.TEMPLATES[category])
        location, b_text, c_text = self._location(channel, category)
        reported_at = self.clock() - timedelta(seconds=rng.randint(0, 120))
        data: dict[str, Any] = {
            "channel": channel,
            "external_id": f"{self.external_prefix}{_CHANNEL_ABBR[channel]}-{self.count:06d}",
            "reported_at": _iso(reported_at),
            "category": category,
            "priority": "urgent"
            if (category == "safety.hazard" and rng.random() < 0.8) or rng.random() < 0.04
            else "normal",
            "title": title.format(b=b_text, c=c_text),
            "description": description.format(b=b_text, c=c_text),
            "location": location,
        }
        if rng.random() < 0.01:  # a platform that does not classify: intake makes it `other`
            del data["category"]
        if channel == "grid_patrol" or rng.random() < 0.1:
            data["reporter"] = {"anonymous": True}
        else:
            data["reporter"] = {
                "name": f"测试居民·{rng.choice('甲乙丙丁戊己庚辛')}（虚构）",
                "phone": self._phone(),
                "anonymous": False,
            }
        if category.startswith("dispute."):
            data["parties"] = self._parties()
        if category.startswith("help."):
            need = list(skills or ("elderly_care",))
            if rng.random() < 0.25:
                extra = rng.choice(sc.SKILLS)
                if extra not in need:
                    need.append(extra)
            data["needs"] = {"skills": need, "people": rng.choices((1, 2, 3), (70, 22, 8))[0]}
        return data

    def _parties(self) -> list[dict[str, Any]]:
        rng = self.rng
        roles = ["applicant", "respondent"] + (["respondent"] if rng.random() < 0.15 else [])
        parties = []
        for i, role in enumerate(roles):
            p: dict[str, Any] = {"role": role, "name": f"测试当事人{'甲乙丙'[i]}（虚构）"}
            if rng.random() < 0.7:
                p["phone"] = self._phone()
            lang = rng.random()
            if lang < 0.25:
                p["language"] = "mn"
            elif lang < 0.9:
                p["language"] = "zh"
            parties.append(p)
        return parties

    def _location(self, channel: str, category: str) -> tuple[dict[str, Any], str, str]:
        """A location as the platform knows it, plus the text used in title/description."""
        rng, ix = self.rng, self.index
        grid = rng.choice(ix.located_grids)
        community = ix.community_of_grid(grid) or rng.choice(ix.communities)
        building = rng.choice(ix.buildings_of[grid])
        b_text = building.aliases[0] if building.aliases else building.address
        parts = building.address.split()
        c_text = parts[1] if len(parts) >= 3 else ix.community_name.get(community, "小区")
        service_like = category.startswith(("service.", "enquiry."))
        r = rng.random()
        if channel == "grid_patrol":
            loc = {"building": building.code} if r < 0.6 else {"grid": grid}
        elif service_like and r < 0.5:
            loc = {"community": community}
        elif r < 0.30:
            loc = {"building": building.code}
            if rng.random() < 0.5:
                loc["community"] = community
        elif r < 0.42:
            loc = {"grid": grid}
        elif r < 0.56:
            loc = {"address": building.address}
        elif r < 0.72:
            alias = rng.choice(building.aliases) if building.aliases else building.address
            if rng.random() < 0.3:
                alias = alias.translate(_CN_DIGITS)  # typed on a phone with full-width digits
            loc = {"address": alias}
        elif r < 0.84:
            loc = {"community": community}
        elif r < 0.93:
            loc = {
                "community": community,
                "address": rng.choice(building.aliases or [building.address]),
            }
        else:
            loc = {"address": rng.choice(sc.UNLOCATABLE_ADDRESSES)}
        return loc, b_text, c_text

    def _spoil(self, data: dict[str, Any]) -> dict[str, Any]:
        """Break one thing so that `Report` validation must fail."""
        bad = json.loads(json.dumps(data))
        how = self.rng.randrange(7)
        if how == 0:
            del bad["title"]
        elif how == 1:
            bad["title"] = "   "
        elif how == 2:
            bad["channel"] = "fax"
        elif how == 3:
            bad["location"] = {}
        elif how == 4:
            bad["reporter"] = {"name": "测试居民（虚构）", "phone": "call-me", "anonymous": False}
        elif how == 5:
            bad["reported_at"] = bad["reported_at"][:19]  # no offset
        else:
            bad["external_id"] = ""
        return bad


def make_volunteers(
    directory: Directory, rng: random.Random, per_community: int = 15
) -> list[dict[str, Any]]:
    """About `per_community` volunteers per community (dispatch.Volunteer dicts), fictional."""
    ix = DirectoryIndex(directory)
    out: list[dict[str, Any]] = []
    kinds = {"volunteer": 60, "party_member": 30, "partner_unit": 10}
    for community in ix.communities:
        grids = ix.grids_of.get(community) or [None]
        n = max(1, per_community + rng.randint(-2, 2))
        for i in range(1, n + 1):
            kind = _weighted(rng, kinds)
            skills = rng.sample(sc.SKILLS, rng.randint(1, 3))
            if i <= len(sc.SKILLS):  # every community covers every skill at least once
                skills = list(dict.fromkeys([sc.SKILLS[i - 1], *skills]))
            label = {"volunteer": "志愿者", "party_member": "党员", "partner_unit": "双报到单位"}[
                kind
            ]
            out.append(
                {
                    "id": f"v-{community}-{i:03d}",
                    "name": f"示例{label}{i:02d}（虚构）",
                    "community": community,
                    "grid": None if kind == "partner_unit" else rng.choice(grids),
                    "skills": skills,
                    "languages": ["zh", "mn"] if rng.random() < 0.3 else ["zh"],
                    "kind": kind,
                    "max_tasks": rng.randint(2, 3),
                    "active": True,
                }
            )
    return out


# ---- statistics ---------------------------------------------------------------------------


@dataclass
class SimStats:
    """What the simulator did and saw; counts only, nothing personal."""

    reports_sent: int = 0  # JetStream publishes acknowledged (new + repeats + invalid)
    reports_new: int = 0
    reports_repeated: int = 0
    reports_retried_same_id: int = 0  # of the repeats, sent again with the same envelope id
    reports_invalid: int = 0
    reports_duplicate_acks: int = 0  # JetStream answered "duplicate" (Nats-Msg-Id dedup)
    publish_errors: int = 0
    volunteers_registered: int = 0
    commands_sent: Counter[str] = field(default_factory=Counter)  # "case.accept" -> n
    commands_ok: int = 0
    commands_refused: Counter[str] = field(default_factory=Counter)  # error code -> n
    commands_timed_out: int = 0
    commands_no_responders: int = 0
    command_errors: int = 0
    events_seen: Counter[str] = field(default_factory=Counter)  # "case.assigned" -> n
    own_cases: int = 0
    handler_errors: int = 0
    actions_cancelled: int = 0
    elapsed_s: float = 0.0
    envelope_ids: set[str] = field(default_factory=set, repr=False)

    @property
    def reports_unique(self) -> int:
        """Distinct envelope ids acknowledged: what the stream should hold after dedup."""
        return len(self.envelope_ids)

    @property
    def commands_total(self) -> int:
        return sum(self.commands_sent.values())

    @property
    def commands_refused_total(self) -> int:
        return sum(self.commands_refused.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": round(self.elapsed_s, 1),
            "reports": {
                "sent": self.reports_sent,
                "unique_envelopes": self.reports_unique,
                "new": self.reports_new,
                "repeated": self.reports_repeated,
                "retried_same_id": self.reports_retried_same_id,
                "invalid": self.reports_invalid,
                "duplicate_acks": self.reports_duplicate_acks,
                "publish_errors": self.publish_errors,
            },
            "volunteers_registered": self.volunteers_registered,
            "commands": {
                "sent": self.commands_total,
                "ok": self.commands_ok,
                "refused": self.commands_refused_total,
                "refused_by_code": dict(sorted(self.commands_refused.items())),
                "timed_out": self.commands_timed_out,
                "no_responders": self.commands_no_responders,
                "errors": self.command_errors,
                "by_verb": dict(sorted(self.commands_sent.items())),
            },
            "own_cases": self.own_cases,
            "events_seen": dict(sorted(self.events_seen.items())),
            "handler_errors": self.handler_errors,
            "actions_cancelled": self.actions_cancelled,
        }

    def status_line(self) -> str:
        ev = self.events_seen
        return (
            f"t={self.elapsed_s:6.1f}s reports={self.reports_sent} (rep {self.reports_repeated},"
            f" bad {self.reports_invalid}, err {self.publish_errors}) cases={self.own_cases}"
            f" cmds={self.commands_total} ok={self.commands_ok} refused={self.commands_refused_total}"
            f" timeout={self.commands_timed_out} noresp={self.commands_no_responders}"
            f" assigned={ev['case.assigned']} escalated={ev['case.escalated']}"
            f" resolved={ev['case.resolved']} closed={ev['case.closed']}"
        )


# ---- the people ---------------------------------------------------------------------------


@dataclass
class _Case:
    case_id: str
    category: str = "other"
    community: str | None = None
    grid: str | None = None
    parties: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    assign_version: int = 0
    level: str | None = None
    assignee: str | None = None
    handling: str = "direct"
    respond_by: datetime | None = None
    resolve_by: datetime | None = None
    accepted: bool = False
    paused: bool = False
    resolved: bool = False
    closed: bool = False
    feedback_planned: bool = False


@dataclass
class _Mediation:
    mediation_id: str
    case_id: str
    mediator: str | None
    due_by: datetime | None
    done: bool = False


Progress = Callable[[SimStats], Any]


class _Simulation:
    def __init__(
        self,
        nc: Any,
        directory: Directory,
        rng: random.Random,
        speed: float,
        stats: SimStats,
        run_tag: str,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.ix = DirectoryIndex(directory)
        self.directory = directory
        self.rng = rng
        self.speed = speed
        self.stats = stats
        self.own_prefix = f"sim-{run_tag}-"
        self.cases: dict[str, _Case] = {}
        self.mediations: dict[str, _Mediation] = {}
        self.volunteers: dict[str, dict[str, Any]] = {}
        self.completing: set[tuple[str, str]] = set()
        self.tasks_done: set[str] = set()
        self.pending: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.sent: OrderedDict[tuple[Any, Any], tuple[str, bytes]] = OrderedDict()

    # -- plumbing ------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.stopping or len(self.pending) > 20000:
            coro.close()
            return
        # the coroutine is the task itself, not awaited inside a wrapper: a task cancelled
        # before its first step then closes it (a wrapper's inner coroutine was never awaited)
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.handler_errors += 1

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    @staticmethod
    def window(
        until: datetime | None, default: float, lo: float = 1.0, hi: float = 3600.0
    ) -> float:
        """Seconds from now until `until` (clamped), or `default` if unknown."""
        if until is None:
            return default
        return min(hi, max(lo, (until - datetime.now(UTC)).total_seconds()))

    async def command(
        self, service: str, verb: str, data: dict[str, Any], case_id: str | None = None
    ) -> dict[str, Any] | None:
        """Send one command; the reply dict when ok, else None. Never raises (except cancel)."""
        import nats.errors

        subject = s.command(service, verb)
        env = Envelope.new(type=subject, data=data, source=SOURCE, subject=case_id)
        self.stats.commands_sent[f"{service}.{verb}"] += 1
        try:
            msg = await self.nc.request(subject, env.to_json(), timeout=COMMAND_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            self.stats.commands_no_responders += 1
            return None
        except (TimeoutError, nats.errors.TimeoutError):
            self.stats.commands_timed_out += 1
            return None
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.command_errors += 1
            return None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            self.stats.command_errors += 1
            return None
        if isinstance(reply, dict) and reply.get("ok") is True:
            self.stats.commands_ok += 1
            return reply
        code = "unknown"
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            code = str(reply["error"].get("code") or "unknown")[:64]
        self.stats.commands_refused[code] += 1
        return None

    # -- reports -------------------------------------------------------------------------

    async def publish(self, draw: Draw) -> None:
        import nats.errors

        key = draw.key
        reuse = self.sent.get(key) if draw.kind == "repeat" and draw.same_envelope else None
        if reuse is not None:
            env_id, payload = reuse
        else:
            channel = draw.data.get("channel")
            source = (
                f"/platform/{channel}"
                if isinstance(channel, str) and channel
                else "/platform/unknown"
            )
            env = Envelope.new(type=s.INTAKE_REPORT, data=draw.data, source=source)
            env_id, payload = env.id, env.to_json()
        try:
            ack = await self.js.publish(
                s.INTAKE_REPORT, payload, timeout=COMMAND_TIMEOUT_S, headers={"Nats-Msg-Id": env_id}
            )
        except asyncio.CancelledError:
            raise
        except (nats.errors.Error, TimeoutError, OSError):
            self.stats.publish_errors += 1
            return
        except Exception:
            self.stats.publish_errors += 1
            return
        st = self.stats
        st.reports_sent += 1
        st.envelope_ids.add(env_id)
        if getattr(ack, "duplicate", False):
            st.reports_duplicate_acks += 1
        if draw.kind == "new":
            st.reports_new += 1
            self.sent[key] = (env_id, payload)
            if len(self.sent) > 2000:
                self.sent.popitem(last=False)
        elif draw.kind == "repeat":
            st.reports_repeated += 1
            if reuse is not None:
                st.reports_retried_same_id += 1
        else:
            st.reports_invalid += 1

    async def publish_loop(self, factory: ReportFactory, rate: float, deadline: float) -> None:
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        next_t = loop.time()
        inflight = asyncio.Semaphore(64)
        publishing: set[asyncio.Task[Any]] = set()

        async def one(draw: Draw) -> None:
            try:
                await self.publish(draw)
            finally:
                inflight.release()

        while not self.stopping:
            now = loop.time()
            if now >= deadline:
                break
            if next_t > now:
                await asyncio.sleep(min(next_t - now, deadline - now))
                continue
            if now - next_t > 2.0:  # fell behind (slow broker): do not burst to catch up
                next_t = now
            await inflight.acquire()
            task = loop.create_task(one(factory.next()))
            publishing.add(task)
            task.add_done_callback(publishing.discard)
            next_t += interval
        if publishing:  # let the last publishes get their acks, so the counts are exact
            _done, late = await asyncio.wait(publishing, timeout=COMMAND_TIMEOUT_S + 1)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)

    async def register_volunteers(self, volunteers: list[dict[str, Any]]) -> None:
        async def one(v: dict[str, Any]) -> None:
            self.volunteers[v["id"]] = v
            if await self.command("dispatch", "register_volunteer", {"volunteer": v}) is not None:
                self.stats.volunteers_registered += 1

        await asyncio.gather(*(one(v) for v in volunteers))

    # -- events --------------------------------------------------------------------------

    async def on_message(self, msg: Any) -> None:
        try:
            env = json.loads(msg.data)
            type_ = env.get("type") if isinstance(env, dict) else None
            type_ = type_ if isinstance(type_, str) else msg.subject
            if is_newer_copy(type_):
                return  # the same fact also comes as its older version (`unfilled.v2` and `.v1`)
            data = env.get("data") if isinstance(env, dict) else None
            short = type_.removeprefix("gridcase.").rsplit(".v", 1)[0]
            self.stats.events_seen[short] += 1
            if self.stopping or not isinstance(data, dict):
                return
            handler = getattr(self, "on_" + short.replace(".", "_"), None)
            if handler is not None:
                handler(data)
        except Exception:
            self.stats.handler_errors += 1

    def _own(self, data: dict[str, Any]) -> _Case | None:
        case_id = data.get("case_id")
        case = self.cases.get(case_id) if isinstance(case_id, str) else None
        if case is not None and isinstance(data.get("version"), int):
            case.version = max(case.version, data["version"])
        return case

    # case lifecycle

    def on_case_received(self, d: dict[str, Any]) -> None:
        ext = d.get("external_id")
        if not (isinstance(ext, str) and ext.startswith(self.own_prefix)):
            return
        case_id = d.get("case_id")
        if not isinstance(case_id, str) or case_id in self.cases:
            return
        scope = d.get("scope") or {}
        self.cases[case_id] = _Case(
            case_id=case_id,
            category=str(d.get("category") or "other"),
            community=scope.get("community"),
            grid=scope.get("grid"),
            parties=[p for p in d.get("parties") or [] if isinstance(p, dict)],
            version=int(d.get("version") or 1),
        )
        self.stats.own_cases += 1

    def on_case_assigned(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        if case is None:
            return
        version = int(d.get("version") or 0)
        if version and version <= case.assign_version:
            return  # stale or a repeated delivery
        scope = d.get("scope") or {}
        case.community = scope.get("community") or case.community
        case.grid = scope.get("grid") or case.grid
        case.assign_version = version
        case.level = d.get("level")
        case.assignee = d.get("assignee")
        case.handling = d.get("handling") or "direct"
        case.respond_by = _parse_time(d.get("respond_by"))
        case.resolve_by = _parse_time(d.get("resolve_by"))
        case.accepted = False
        case.resolved = False
        if case.assignee:
            self.spawn(self.work_case(case, version, case.assignee))

    def _current(self, case: _Case, version: int, who: str) -> bool:
        return (
            not self.stopping
            and case.assign_version == version
            and case.assignee == who
            and not case.closed
            and not case.resolved
        )

    async def work_case(self, case: _Case, version: int, who: str) -> None:
        """The assignee: accept (or not, or too late), maybe note/pause/hand up, resolve."""
        rng = self.rng
        if rng.random() < 0.07:
            return  # never answers: the respond clock runs out and the case escalates
        window = self.window(case.respond_by, 60.0, hi=1800.0)
        late = rng.random() < 0.10
        await self.sleep(window * (rng.uniform(1.15, 1.6) if late else rng.uniform(0.05, 0.7)))
        if not self._current(case, version, who):
            return
        if (
            await self.command("case", "accept", {"case_id": case.case_id, "by": who}, case.case_id)
            is None
        ):
            return
        case.accepted = True
        if rng.random() < 0.12:
            await self.sleep(rng.uniform(3, 20))
            if not self._current(case, version, who):
                return
            await self.command(
                "case",
                "note",
                {"case_id": case.case_id, "by": who, "text": rng.choice(sc.NOTES)},
                case.case_id,
            )
        if case.level != "street" and rng.random() < 0.04:
            await self.sleep(rng.uniform(5, 30))
            if self._current(case, version, who):
                await self.command(
                    "case",
                    "escalate",
                    {"case_id": case.case_id, "by": who, "reason": rng.choice(sc.ESCALATE_REASONS)},
                    case.case_id,
                )
            return
        if rng.random() < 0.04:
            await self.sleep(rng.uniform(5, 20))
            if not self._current(case, version, who):
                return
            body = {"case_id": case.case_id, "by": who, "reason": rng.choice(sc.PAUSE_REASONS)}
            if await self.command("case", "pause", body, case.case_id) is not None:
                case.paused = True
                await self.sleep(rng.uniform(20, 90))
                if not self._current(case, version, who):
                    return
                body = {"case_id": case.case_id, "by": who, "reason": "条件具备，继续办理"}
                if await self.command("case", "resume", body, case.case_id) is not None:
                    case.paused = False
        if case.handling != "direct":
            return  # mediation or volunteers settle it; see resolve_after_flow
        window = self.window(case.resolve_by, 180.0, lo=2.0)
        late = rng.random() < 0.10
        await self.sleep(window * (rng.uniform(1.1, 1.4) if late else rng.uniform(0.15, 0.8)))
        await self.resolve(case, version, who)

    async def resolve(self, case: _Case, version: int, who: str) -> None:
        if not self._current(case, version, who):
            return
        group = case.category.split(".", 1)[0]
        summaries = sc.RESOLVE_SUMMARIES.get(case.category) or sc.RESOLVE_SUMMARIES.get(
            group, sc.RESOLVE_SUMMARIES["default"]
        )
        body = {"case_id": case.case_id, "by": who, "summary": self.rng.choice(summaries)}
        await self.command("case", "resolve", body, case.case_id)

    async def resolve_after_flow(self, case_id: str | None) -> None:
        """After an agreement or a completed task the assignee records the resolution,
        unless routing already resolved the case itself."""
        case = self.cases.get(case_id or "")
        if case is None:
            return
        version, who = case.assign_version, case.assignee
        await self.sleep(self.rng.uniform(5, 30))
        if who and self._current(case, version, who):
            await self.resolve(case, version, who)

    def on_case_accepted(self, d: dict[str, Any]) -> None:
        if case := self._own(d):
            case.accepted = True

    def on_case_paused(self, d: dict[str, Any]) -> None:
        if case := self._own(d):
            case.paused = True

    def on_case_resumed(self, d: dict[str, Any]) -> None:
        if case := self._own(d):
            case.paused = False

    def on_case_resolved(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        if case is None:
            return
        case.resolved = True
        if not case.feedback_planned:
            case.feedback_planned = True
            self.spawn(self.follow_up(case))

    async def follow_up(self, case: _Case) -> None:
        """The 12345 follow-up desk (回访): mostly satisfied, ~10 % dissatisfied, some never."""
        rng = self.rng
        if rng.random() < 0.06:
            return  # nobody reached: feedback_timeout
        await self.sleep(rng.uniform(15, 150))
        if case.closed or not case.resolved or self.stopping:
            return
        satisfaction = _weighted(
            rng, {"satisfied": 75, "basically_satisfied": 15, "dissatisfied": 10}
        )
        body = {"case_id": case.case_id, "by": FOLLOW_UP_DESK, "satisfaction": satisfaction}
        await self.command("case", "feedback", body, case.case_id)

    def on_case_reopened(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        if case is None:
            return
        case.resolved = False
        case.feedback_planned = False
        # if no new assignment follows, the same assignee works it again
        version, who = case.assign_version, case.assignee
        if who:
            self.spawn(self._rework(case, version, who))

    async def _rework(self, case: _Case, version: int, who: str) -> None:
        await self.sleep(self.rng.uniform(20, 120))
        await self.resolve(case, version, who)

    def on_case_closed(self, d: dict[str, Any]) -> None:
        if case := self._own(d):
            case.closed = True  # pending actions holding it see this and stop
            del self.cases[case.case_id]  # later events for it are ignored; memory stays bounded

    # mediation

    def on_mediation_opened(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        mid = d.get("mediation_id")
        if case is None or not isinstance(mid, str) or mid in self.mediations:
            return
        med = _Mediation(mid, case.case_id, d.get("mediator"), _parse_time(d.get("due_by")))
        self.mediations[mid] = med
        self.spawn(self.mediate(med, case))

    def on_mediation_mediator_assigned(self, d: dict[str, Any]) -> None:
        med = self.mediations.get(d.get("mediation_id") or "")
        if med is not None and d.get("mediator"):
            med.mediator = d["mediator"]

    def on_mediation_failed(self, d: dict[str, Any]) -> None:
        if med := self.mediations.get(d.get("mediation_id") or ""):
            med.done = True

    on_mediation_closed = on_mediation_failed

    def on_mediation_agreed(self, d: dict[str, Any]) -> None:
        if d.get("case_id") in self.cases:
            self.spawn(self.resolve_after_flow(d.get("case_id")))

    def _pick_mediator(self, case: _Case) -> str | None:
        community = case.community or self.ix.community_of_grid(case.grid)
        pool = self.ix.staff("mediator", community) or [
            m for c in self.ix.communities for m in self.ix.staff("mediator", c)
        ]
        if not pool:
            return None
        if any(p.get("language") == "mn" for p in case.parties):
            pool = [m for m in pool if "mn" in [str(x) for x in m.languages]] or pool
        return self.rng.choice(pool).id

    async def mediate(self, med: _Mediation, case: _Case) -> None:
        """The mediator: consents of every party, sessions, agreement or failure, follow-up."""
        rng = self.rng
        window = self.window(med.due_by, 600.0, lo=10.0)
        mid = med.mediation_id

        def live() -> bool:
            return not (self.stopping or med.done or case.closed)

        if med.mediator is None:
            await self.sleep(window * rng.uniform(0.01, 0.05))
            mediator = self._pick_mediator(case)
            if mediator is None or not live():
                return
            community = case.community or self.ix.community_of_grid(case.grid)
            directors = self.ix.staff("community_director", community)
            by = directors[0].id if directors else mediator
            body = {"mediation_id": mid, "by": by, "mediator": mediator}
            if await self.command("mediation", "assign_mediator", body, case.case_id) is None:
                return
            med.mediator = mediator
        who = med.mediator
        refs = [p.get("ref") for p in case.parties if isinstance(p.get("ref"), str)] or ["p1", "p2"]
        refuser = rng.choice(refs) if rng.random() < 0.08 else None
        for ref in refs:
            await self.sleep(window * rng.uniform(0.02, 0.06))
            if not live():
                return
            body = {"mediation_id": mid, "by": who, "party": ref, "consented": ref != refuser}
            await self.command("mediation", "record_consent", body, case.case_id)
            if ref == refuser:
                await self.sleep(rng.uniform(2, 10))
                if live():  # the service may already have failed it on the refusal
                    body = {"mediation_id": mid, "by": who, "reason": "party_declined"}
                    await self.command("mediation", "record_failure", body, case.case_id)
                return
        if rng.random() < 0.05:
            await self.sleep(window * 1.1)  # drags on past the norm
        roles = sorted({str(p.get("role")) for p in case.parties if p.get("role")}) or [
            "applicant",
            "respondent",
        ]
        for _n in range(1 if rng.random() < 0.7 else 2):
            await self.sleep(window * rng.uniform(0.08, 0.2))
            if not live():
                return
            body = {
                "mediation_id": mid,
                "by": who,
                "held_at": _iso(datetime.now(UTC)),
                "attendees": roles,
                "summary": rng.choice(sc.SESSION_SUMMARIES),
            }
            await self.command("mediation", "record_session", body, case.case_id)
        await self.sleep(window * rng.uniform(0.05, 0.15))
        if not live():
            return
        if rng.random() < 0.2:
            body = {"mediation_id": mid, "by": who, "reason": "no_agreement"}
            await self.command("mediation", "record_failure", body, case.case_id)
            return
        body = {"mediation_id": mid, "by": who, "terms": rng.choice(sc.AGREEMENT_TERMS)}
        if await self.command("mediation", "record_agreement", body, case.case_id) is None:
            return
        await self.sleep(window * rng.uniform(0.1, 0.3))
        if self.stopping or med.done:
            return
        body = {"mediation_id": mid, "by": who, "fulfilled": rng.random() < 0.9}
        await self.command("mediation", "record_follow_up", body, case.case_id)

    # dispatch

    def on_dispatch_task_opened(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        task_id = d.get("task_id")
        if case is None or not isinstance(task_id, str) or not d.get("open_claim"):
            return
        if self.rng.random() < 0.12:
            return  # nobody claims this micro-wish: unfilled
        community = d.get("community") or case.community
        skills = set(d.get("skills") or [])
        pool = [v for v in self.volunteers.values() if v["community"] == community] or list(
            self.volunteers.values()
        )
        pool.sort(
            key=lambda v: (-len(skills & set(v["skills"])), v["grid"] != d.get("grid"), v["id"])
        )
        top = pool[: max(3, int(d.get("people") or 1) * 2)]
        chosen = self.rng.sample(top, min(len(top), int(d.get("people") or 1)))
        for v in chosen:
            self.spawn(self.claim(task_id, case.case_id, v["id"]))

    async def claim(self, task_id: str, case_id: str, volunteer: str) -> None:
        await self.sleep(self.rng.uniform(10, 90))
        if self.stopping or task_id in self.tasks_done:
            return
        body = {"task_id": task_id, "volunteer": volunteer}
        if await self.command("dispatch", "claim", body, case_id) is not None:
            self._start_completion(task_id, case_id, volunteer)

    def on_dispatch_offered(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        task_id, volunteer = d.get("task_id"), d.get("volunteer")
        if case is None or not isinstance(task_id, str) or volunteer not in self.volunteers:
            return
        self.spawn(
            self.answer_offer(task_id, case.case_id, volunteer, _parse_time(d.get("expires_at")))
        )

    async def answer_offer(
        self, task_id: str, case_id: str, volunteer: str, expires: datetime | None
    ) -> None:
        rng = self.rng
        window = self.window(expires, 60.0, hi=1800.0)
        r = rng.random()
        if r >= 0.9:
            return  # does not answer: the offer expires
        accept = r < 0.68
        await self.sleep(window * (rng.uniform(0.1, 0.6) if accept else rng.uniform(0.05, 0.5)))
        if self.stopping or task_id in self.tasks_done:
            return
        body = {
            "task_id": task_id,
            "volunteer": volunteer,
            "answer": "accept" if accept else "decline",
        }
        await self.command("dispatch", "respond", body, case_id)

    def on_dispatch_accepted(self, d: dict[str, Any]) -> None:
        case = self._own(d)
        task_id, volunteer = d.get("task_id"), d.get("volunteer")
        if case is None or not isinstance(task_id, str) or volunteer not in self.volunteers:
            return
        self._start_completion(task_id, case.case_id, volunteer)

    def _start_completion(self, task_id: str, case_id: str, volunteer: str) -> None:
        if (task_id, volunteer) in self.completing:
            return
        self.completing.add((task_id, volunteer))
        self.spawn(self.complete(task_id, case_id, volunteer))

    async def complete(self, task_id: str, case_id: str, volunteer: str) -> None:
        rng = self.rng
        case = self.cases.get(case_id)
        window = self.window(case.resolve_by if case else None, 180.0, lo=5.0)
        await self.sleep(window * rng.uniform(0.15, 0.7))
        if self.stopping or task_id in self.tasks_done:
            return
        hours = rng.choice((0.5, 1.0, 1.5, 2.0, 2.5, 3.0))
        body = {"task_id": task_id, "volunteer": volunteer, "hours": hours}
        await self.command("dispatch", "complete", body, case_id)

    def on_dispatch_completed(self, d: dict[str, Any]) -> None:
        if d.get("case_id") in self.cases:
            self.spawn(self.resolve_after_flow(d.get("case_id")))

    def on_dispatch_unfilled(self, d: dict[str, Any]) -> None:
        if isinstance(d.get("task_id"), str):
            self.tasks_done.add(d["task_id"])

    on_dispatch_cancelled = on_dispatch_unfilled

    # -- shutdown ------------------------------------------------------------------------

    async def stop(self) -> None:
        self.stopping = True
        pending = list(self.pending)
        for task in pending:
            task.cancel()
        self.stats.actions_cancelled += len(pending)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def _call_progress(on_progress: Progress | None, stats: SimStats) -> None:
    if on_progress is None:
        return
    try:
        result = on_progress(stats)
        if inspect.isawaitable(result):
            await result
    except Exception:
        pass


async def simulate(
    nats_url: str,
    rate: float,
    duration: float,
    seed: int | None,
    directory: Directory,
    speed: float = 1.0,
    on_progress: Progress | None = None,
    *,
    run_tag: str | None = None,
    load_directory: bool = False,
    volunteers_per_community: int = 15,
    progress_interval: float = 1.0,
) -> SimStats:
    """Play platforms and people for `duration` seconds, `rate` reports per second.

    `speed` divides every delay of the simulated people; `seed` makes every choice
    deterministic (the timing of a live system is not). `on_progress(stats)` (sync or async)
    is called about every `progress_interval` seconds and once at the end.
    With `load_directory`, the directory is first sent on `gridcase.cmd.directory.load.v1`.
    """
    import nats

    if speed <= 0:
        raise ValueError("speed must be > 0")
    master = random.Random(seed)
    factory_rng = random.Random(master.getrandbits(64))
    people_rng = random.Random(master.getrandbits(64))
    volunteer_rng = random.Random(master.getrandbits(64))
    tag = run_tag or f"{int(time.time()):x}{master.getrandbits(16):04x}"

    stats = SimStats()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + max(0.0, duration)

    async def _quiet_error(_e: Exception) -> None:
        pass

    servers = [u.strip() for u in nats_url.split(",") if u.strip()]  # a cluster may be listed
    nc = await nats.connect(
        servers,
        name="gridcase-simulator",
        connect_timeout=5,
        max_reconnect_attempts=60,
        error_cb=_quiet_error,
        disconnected_cb=None,
    )
    sim = _Simulation(nc, directory, people_rng, speed, stats, tag)
    factory = ReportFactory(directory, factory_rng, run_tag=tag)
    subs = []
    ticker: asyncio.Task[Any] | None = None

    async def tick() -> None:
        while True:
            await asyncio.sleep(progress_interval)
            stats.elapsed_s = loop.time() - started
            await _call_progress(on_progress, stats)

    try:
        for subject in ("gridcase.case.>", "gridcase.mediation.>", "gridcase.dispatch.>"):
            subs.append(await nc.subscribe(subject, cb=sim.on_message))
        if on_progress is not None:
            ticker = loop.create_task(tick())
        if load_directory:
            await sim.command("directory", "load", directory.model_dump(mode="json"))
        sim.spawn(
            sim.register_volunteers(
                make_volunteers(directory, volunteer_rng, volunteers_per_community)
            )
        )
        await sim.publish_loop(factory, rate, deadline)
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await sim.stop()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await nc.close()
        stats.elapsed_s = loop.time() - started
    await _call_progress(on_progress, stats)
    return stats


# ---- command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--rate", type=float, default=1.0, help="reports per second (default 1)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="seed for deterministic choices")
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("GRIDCASE_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS URL (default $GRIDCASE_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="divide the people's delays by this"
    )
    parser.add_argument("--directory", default=str(DEFAULT_DIRECTORY), help="directory YAML file")
    parser.add_argument(
        "--load-directory", action="store_true", help="send the directory to routing first"
    )
    parser.add_argument("--quiet", action="store_true", help="no status line, only the final stats")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments (for a launcher that owns the parser)."""
    import nats.errors

    if args.rate < 0 or args.duration < 0 or args.speed <= 0:
        print("simulate: --rate and --duration must be >= 0, --speed > 0", file=sys.stderr)
        return 2
    try:
        directory = load_directory(args.directory)
    except Exception as exc:  # noqa: BLE001 — shown to the operator, names the file only
        print(
            f"simulate: cannot load directory {args.directory}: {type(exc).__name__}",
            file=sys.stderr,
        )
        return 2
    last: list[SimStats] = []
    tty = sys.stderr.isatty()

    def show(stats: SimStats) -> None:
        last[:] = [stats]
        if not args.quiet:
            print(
                ("\r" if tty else "") + stats.status_line(),
                end="" if tty else "\n",
                file=sys.stderr,
                flush=True,
            )

    try:
        stats = asyncio.run(
            simulate(
                args.nats_url,
                args.rate,
                args.duration,
                args.seed,
                directory,
                speed=args.speed,
                on_progress=show,
                load_directory=args.load_directory,
            )
        )
    except KeyboardInterrupt:
        if tty and not args.quiet:
            print(file=sys.stderr)
        if last:
            print(json.dumps(last[0].as_dict(), ensure_ascii=False, indent=2))
        return 130
    except (OSError, nats.errors.Error) as exc:
        print(
            f"\nsimulate: cannot reach NATS at {args.nats_url}: {type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    if tty and not args.quiet:
        print(file=sys.stderr)
    print(json.dumps(stats.as_dict(), ensure_ascii=False, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`gridcase simulate --rate R --duration D [--seed S] [--nats-url URL] [--speed X]`."""
    parser = add_arguments(
        argparse.ArgumentParser(prog="gridcase simulate", description="Demo traffic for gridcase.")
    )
    return run(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())
