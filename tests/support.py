"""Test helpers shared by every suite: real servers on free loopback ports, services in-process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from shared.app import Runtime, build_app
from shared.contract.envelope import Envelope
from shared.embedded import Child, free_port, nats_healthy, nats_server, wait_until
from shared.messaging import declare_streams
from shared.settings import Settings


@dataclass
class NatsServer:
    url: str
    port: int
    monitor_port: int
    store: Path
    child: Child
    name: str = "gridcase-nats"
    cluster_port: int | None = None
    routes: list[int] | None = None

    def restart(self) -> None:
        """Stop (if still running) and start on the same ports and store; JetStream state survives."""
        self.child.stop()
        self.child = nats_server(
            self.store, self.port, self.monitor_port, self.child.log_path,
            name=self.name, cluster_port=self.cluster_port, routes=self.routes,
        ).start()
        wait_until(lambda: nats_healthy(self.monitor_port), 30, "nats-server")


def start_nats(tmp: Path) -> NatsServer:
    port, monitor = free_port(), free_port()
    child = nats_server(tmp / "js", port, monitor, tmp / "nats.log").start()
    wait_until(lambda: nats_healthy(monitor), 20, "nats-server")
    return NatsServer(f"nats://127.0.0.1:{port}", port, monitor, tmp / "js", child)


def service_settings(service: str, nats_url: str, mongodb_url: str, prefix: str, **over: Any) -> Settings:
    values: dict[str, Any] = dict(
        service=service,
        nats_url=nats_url,
        mongodb_url=mongodb_url,
        database_prefix=prefix,
        http_port=free_port(),
        timer_poll_s=0.1,
        outbox_relay_s=0.5,
        ack_wait_s=5.0,
    )
    values.update(over)
    return Settings(**values)


@asynccontextmanager
async def running(service: str, settings: Settings, register: Callable[[Runtime], None] | None = None) -> AsyncIterator[Runtime]:
    """Run one service in this process against real servers."""
    app, rt = build_app(service, settings, register)
    await app.start()  # returns once the server has registered every subscription (ready)
    try:
        yield rt
    finally:
        await app.stop()


async def connect(url: str):
    nc = await nats.connect(url)
    await declare_streams(nc.jetstream())
    return nc


async def publish(js, subject: str, data: Any, *, id: str | None = None, subject_id: str | None = None):
    env = Envelope.new(subject, data, source="/tests", id=id, subject=subject_id)
    return await js.publish(subject, env.to_json(), headers={"Nats-Msg-Id": env.id})


async def command(nc, subject: str, data: Any, *, id: str | None = None, timeout: float = 10.0) -> dict:
    env = Envelope.new(subject, data, source="/tests", id=id)
    msg = await nc.request(subject, env.to_json(), timeout=timeout)
    return json.loads(msg.data)


async def stream_messages(js, stream: str, subject: str | None = None) -> list[Any]:
    """Every message now stored in `stream` (optionally one subject), via an ephemeral consumer."""
    info = await js.stream_info(stream)
    total = info.state.messages
    if total == 0:
        return []
    sub = await js.pull_subscribe(
        subject or ">",
        stream=stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30),
    )
    out: list[Any] = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py may raise either under load
                break
            out.extend(batch)
            if len(out) >= total:
                break
    finally:
        await sub.unsubscribe()
    return out


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll an (async) check until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:  # a node failing over: ask again
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@dataclass
class NatsCluster:
    nodes: list[NatsServer]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)


def start_nats_cluster(tmp: Path, size: int = 3) -> NatsCluster:
    """A real JetStream cluster on loopback: `size` nats-servers with routes to each other."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    nodes = []
    for i, (port, monitor, cluster) in enumerate(ports):
        routes = [c for j, (_, _, c) in enumerate(ports) if j != i]
        child = nats_server(
            tmp / f"n{i}",
            port,
            monitor,
            tmp / f"n{i}.log",
            name=f"n{i}",
            cluster_port=cluster,
            routes=routes,
        )
        nodes.append(
            NatsServer(f"nats://127.0.0.1:{port}", port, monitor, tmp / f"n{i}", child.start(), f"n{i}", cluster, routes)
        )
    for node in nodes:
        wait_until(lambda node=node: nats_healthy(node.monitor_port), 30, f"cluster node {node.url}")
    return NatsCluster(nodes)


def small_directory(communities: int = 2, grids: int = 2, buildings: int = 3) -> dict[str, Any]:
    """A valid directory document: `cN` communities × `gN` grids × `bN` buildings, fully staffed."""
    doc: dict[str, Any] = {
        "districts": [{"code": "linhe", "name": "临河区"}],
        "streets": [{"code": "jinchuan", "name": "金川街道", "district": "linhe"}],
        "communities": [],
        "grids": [],
        "buildings": [],
        "staff": [{"id": "s-street", "name": "示例·街道干部（虚构）", "role": "street_officer", "unit": "jinchuan", "languages": ["zh"]}],
    }
    for c in range(1, communities + 1):
        cc = f"c{c}"
        doc["communities"].append({"code": cc, "name": f"测试{c}社区", "district": "linhe", "street": "jinchuan"})
        doc["staff"].append({"id": f"s-{cc}-dir", "name": "示例·主任（虚构）", "role": "community_director", "unit": cc, "languages": ["zh"]})
        doc["staff"].append({"id": f"s-{cc}-med", "name": "示例·调解员（虚构）", "role": "mediator", "unit": cc, "languages": ["zh", "mn"]})
        for g in range(1, grids + 1):
            gc = f"{cc}-g{g}"
            doc["grids"].append({"code": gc, "name": f"{g}网格", "community": cc})
            doc["staff"].append({"id": f"s-{gc}", "name": "示例·网格员（虚构）", "role": "grid_worker", "unit": gc, "languages": ["zh"]})
            for b in range(1, buildings + 1):
                bc = f"{gc}-b{b}"
                doc["buildings"].append({"code": bc, "grid": gc, "address": f"测试{c}社区 {g}网格 {b}号楼", "aliases": [f"{c}区{g}格{b}栋"]})
    return doc


def report(external_id: str, building: str | None = None, *, grid: str | None = None, category: str = "facility.parking", channel: str = "wechat") -> dict[str, Any]:
    """A valid report. Located by `grid` only, it has no building or address, so intake never
    links it to an earlier open case as a duplicate (that rule keys on building/address)."""
    location = {"building": building} if building else {"grid": grid}
    return {
        "channel": channel,
        "external_id": external_id,
        "reported_at": "2026-11-30T08:00:00+08:00",
        "category": category,
        "title": "楼下乱停车",
        "description": "消防通道被占用",
        "location": location,
        "reporter": {"name": "测试居民", "phone": "13800000000", "anonymous": False},
    }
