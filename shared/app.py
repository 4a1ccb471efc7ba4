"""The service app factory: broker, database, outbox, metrics and HTTP routes for one service.

Each service package has `services/<name>/app.py` with `register(rt: Runtime) -> None`, which
declares its subscribers (`rt.messaging.consume` / `rt.messaging.serve`), indexes,
start hooks and background loops. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

import pydantic_core
from faststream.asgi import AsgiFastStream, AsgiResponse
from faststream.nats import JStream
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from .commands import CommandLog
from .contract.catalogue import COMMANDS, EVENTS
from .contract.envelope import Envelope
from .contract.subjects import SERVICE_ACCESS, SERVICE_PORTS, stream_for
from .db import Indexes, make_client, ping
from .logs import log, setup_logging
from .messaging import EventPublisher, Messaging, make_broker
from .outbox import Outbox
from .policy import Policy, load_policy
from .settings import Settings

logger = logging.getLogger("gridcase.app")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
VERSION = "0.1.0"


@dataclass
class Runtime:
    """Everything one service process owns, built by `build_app`."""

    name: str
    settings: Settings
    policy: Policy
    registry: CollectorRegistry
    messaging: Messaging
    mongo: AsyncMongoClient
    db: AsyncDatabase
    publisher: EventPublisher
    outbox: Outbox
    indexes: Indexes
    commands: CommandLog
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    routes: list[tuple[str, ASGIApp]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    subscribed: bool = False

    @property
    def broker(self):
        return self.messaging.broker

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    @property
    def source(self) -> str:
        return f"/gridcase/{self.name}"

    def event(self, type_: str, data: Any, *, subject: str | None = None) -> Envelope[Any]:
        """A new envelope from this service (`source` = `/gridcase/<service>`)."""
        payload = data.model_dump(mode="json", by_alias=True) if hasattr(data, "model_dump") else data
        return Envelope.new(type_, payload, source=self.source, subject=subject)

    async def ready(self) -> dict[str, bool]:
        broker_ok = False
        try:
            broker_ok = bool(self.messaging.broker._connection and self.messaging.nc.is_connected)
        except Exception:
            broker_ok = False
        return {"broker": broker_ok, "subscribed": self.subscribed, "database": await ping(self.mongo)}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> AsgiResponse:
    body = pydantic_core.to_json(data, fallback=str)  # compiled: big KPI replies encode ~5× faster
    return AsgiResponse(body, status, {"content-type": "application/json; charset=utf-8", **(headers or {})})


def query_params(scope: dict) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)


def route(handler: Callable[[dict], Awaitable[AsgiResponse]]) -> ASGIApp:
    """A GET-only raw ASGI route."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            response = _json({"error": "method not allowed"}, 405)
        else:
            try:
                response = await handler(scope)
            except Exception as exc:
                log(logger, logging.ERROR, "http route failed", path=scope.get("path"), error=type(exc).__name__)
                response = _json({"error": "internal error"}, 500)
        await response(scope, receive, send)

    return app


def json_response(data: Any, status: int = 200) -> AsgiResponse:
    return _json(data, status)


def asyncapi_document(rt: Runtime) -> dict[str, Any]:
    spec = AsyncAPI(
        rt.broker,
        title=f"gridcase {rt.name}",
        version=VERSION,
        description=f"The {rt.name} service of gridcase (DESIGN §3).",
        schema_version="3.0.0",
    )
    return _contract_payloads(spec.to_specification().to_jsonable())


def _contract_payloads(doc: dict[str, Any]) -> dict[str, Any]:
    """Every channel of the contract documents its envelope schema from `shared.contract`,
    whatever the handler's signature (a hot path may take raw bytes and validate itself)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, message in components.get("messages", {}).items():
        address = name.split(":", 1)[0]
        model: Any = EVENTS.get(address) or COMMANDS.get(address)
        if model is None and address.endswith(">"):
            model = dict[str, Any]  # a wildcard carries any contract event: its data untyped here
        if model is None:
            continue
        schema = Envelope[model].model_json_schema(ref_template="#/components/schemas/{model}")
        for key, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(key, sub)
        key = f"Envelope[{model.__name__ if isinstance(model, type) else 'dict[str, Any]'}]"
        schemas[key] = schema
        message["payload"] = {"$ref": "#/components/schemas/" + quote(key, safe="")}
    # references from anywhere but the schema table's own keys and the framework's payload
    # placeholders (a placeholder's own title names it)
    kept = [v for k, v in schemas.items() if not k.endswith(":Payload")]
    used = json.dumps([doc.get("channels"), doc.get("operations"), components.get("messages"), kept])
    for key in [k for k in schemas if k.endswith(":Payload") and quote(k, safe="") not in used and k not in used]:
        del schemas[key]
    return doc


def _document_publications(rt: Runtime) -> None:
    """Publishers that only document what this service emits (it publishes via the outbox)."""
    access = SERVICE_ACCESS.get(rt.name)
    for subject in access.publishes if access else ():
        model = EVENTS.get(subject)
        if model is None:
            continue
        rt.broker.publisher(
            subject,
            stream=JStream(stream_for(subject).name, declare=False),
            schema=Envelope[model],  # type: ignore[valid-type]
            title=f"{subject}:Publisher",
        )


def build_app(
    service: str,
    settings: Settings | None = None,
    register: Callable[[Runtime], None] | None = None,
) -> tuple[AsgiFastStream, Runtime]:
    settings = settings or Settings(service=service)
    if settings.service != service:
        settings = settings.model_copy(update={"service": service})
    registry = CollectorRegistry(auto_describe=True)
    messaging = make_broker(settings, service, registry)
    mongo = make_client(settings.mongodb_url, app_name=f"gridcase-{service}", registry=registry)
    db = mongo[settings.database_name()]
    publisher = EventPublisher(messaging)
    outbox = Outbox(mongo, db, publisher)
    indexes = Indexes()
    rt = Runtime(
        name=service,
        settings=settings,
        policy=load_policy(settings.policy_file),
        registry=registry,
        messaging=messaging,
        mongo=mongo,
        db=db,
        publisher=publisher,
        outbox=outbox,
        indexes=indexes,
        commands=CommandLog(db),
    )
    (register or importlib.import_module(f"services.{service}.app").register)(rt)
    _document_publications(rt)
    rt.background.append(lambda: outbox.relay_forever(settings.outbox_relay_s))

    async def live(scope: dict) -> AsgiResponse:
        return _json({"status": "live", "service": service})

    async def ready(scope: dict) -> AsgiResponse:
        checks = await rt.ready()
        ok = all(checks.values())
        return _json({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    async def metrics(scope: dict) -> AsgiResponse:
        return AsgiResponse(generate_latest(registry), 200, {"content-type": CONTENT_TYPE_LATEST})

    async def asyncapi(scope: dict) -> AsgiResponse:
        return _json(asyncapi_document(rt))

    routes = [
        ("/health/live", route(live)),
        ("/health/ready", route(ready)),
        ("/metrics", route(metrics)),
        ("/docs/asyncapi", route(asyncapi)),
        *rt.routes,
    ]

    async def on_startup() -> None:
        await messaging.start()
        await indexes.apply(db)
        for hook in rt.on_start:
            await hook()

    async def after_startup() -> None:
        # Ready only once the server has registered every subscription: a command sent
        # from another connection right after /health/ready must find its responder.
        await messaging.nc.flush()
        rt.subscribed = True
        for loop_fn in rt.background:
            rt._tasks.append(asyncio.create_task(loop_fn()))
        instance = settings.instance_of(service)  # a replicated read model's own durables and database
        log(logger, logging.INFO, "service started", service=service, **({"instance": instance} if instance else {}))

    async def on_shutdown() -> None:
        await _within("batches in hand", messaging.drain_batches())  # written and acked before closing
        await _within("background publishing", outbox.drain())  # and their events published
        for task in rt._tasks:
            task.cancel()
        await _within("background loops", asyncio.gather(*rt._tasks, return_exceptions=True))

    async def after_shutdown() -> None:
        for hook in rt.on_stop:
            await _within("stop hook", hook())
        await _within("outbox sweep", outbox.flush_published())
        await mongo.close()

    app = AsgiFastStream(
        messaging.broker,
        asgi_routes=routes,
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    return app, rt


# Each shutdown step gets this long. A step cut short loses nothing: an unacked batch is
# redelivered, an event not yet published is relayed from the outbox at the next start.
SHUTDOWN_STEP_S = 15.0


async def _within(step: str, work: Awaitable[Any], timeout: float = SHUTDOWN_STEP_S) -> None:
    """Run one shutdown step, giving up (and saying so) rather than hanging the stop."""
    try:
        await asyncio.wait_for(work, timeout)
    except TimeoutError:
        log(logger, logging.WARNING, "shutdown step cut short", step=step, after_s=timeout)


def tune_gc() -> None:
    """A service allocates a fetched batch at a time: thousands of short-lived objects. With
    CPython's default (a young collection every 700 allocations) they are scanned over and
    over while the batch is still alive; collect the young generation every 20,000 instead."""
    gc.set_threshold(20_000, 20, 20)


def run_service(service: str, settings: Settings | None = None) -> None:
    """Run one service in the foreground (what a container does)."""
    import uvicorn

    settings = settings or Settings(service=service)
    setup_logging(settings.log_level, service)
    tune_gc()
    app, _ = build_app(service, settings)
    port = settings.http_port or SERVICE_PORTS[service]
    uvicorn.run(
        app,
        host=settings.http_host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=8,
    )
