"""NATS plumbing every service uses (DESIGN §4).

- `make_broker`: a FastStream `NatsBroker` with the reliability middleware and Prometheus.
- `consume` / `serve`: durable pull consumers (batched fetch, explicit ack, finite
  `max_deliver`) and queue-group command endpoints.
- `ReliabilityMiddleware`: invalid input → DLQ and ack; transient failure → `nak(delay)`
  with back-off; last delivery failing → DLQ and terminate. Commands answer errors as
  `{"ok": false, …}` instead.
- `DeadLetters`: copies messages to `gridcase.dlq.<stream>.<consumer>` with the reason,
  also from the `MAX_DELIVERIES` / `MSG_TERMINATED` advisories, deduplicated by stream seq.
- `EventPublisher`: JetStream publishes that always carry `Nats-Msg-Id: <event id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.client
import nats.js.errors
from faststream import AckPolicy as FsAckPolicy
from faststream.exceptions import AckMessage, HandlerException, NackMessage, RejectMessage
from faststream.middlewares import BaseMiddleware
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js import api
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from .contract.catalogue import UnknownType
from .contract.envelope import Envelope
from .contract.subjects import STREAMS, Stream, dlq_subject, durable_name, stream_for
from .errors import BadMessage, DomainError, field_errors
from .logs import log

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from .settings import Settings

logger = logging.getLogger("gridcase.messaging")

# The first five delays add up to 67.5 s: a message whose documents a crashed writer's open
# transaction holds (until the database reaps it, after 60 s) is still retried after that.
BACKOFF_S = (0.5, 2.0, 5.0, 15.0, 45.0, 60.0)
DLQ_REASON = "Gridcase-Dlq-Reason"
PERMANENT = (ValidationError, BadMessage, UnknownType, json.JSONDecodeError, UnicodeDecodeError)


def backoff(delivered: int) -> float:
    """Delay before the next attempt after `delivered` failed deliveries."""
    return BACKOFF_S[min(max(delivered, 1), len(BACKOFF_S)) - 1]


@dataclass
class ConsumerSpec:
    stream: str
    durable: str
    subject: str
    max_deliver: int
    ack_wait_s: float
    max_ack_pending: int

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            filter_subject=self.subject,
            max_ack_pending=self.max_ack_pending,
            max_waiting=512,
        )


class DeadLetters:
    """Keeps what could not be processed, with the reason, in `GRIDCASE_DLQ`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.nc: Client | None = None
        self.count = Counter(
            "gridcase_dlq_messages",
            "Messages sent to the dead-letter stream",
            ["stream", "consumer", "reason"],
            registry=registry,
        )

    def bind(self, nc: Client) -> None:
        self.nc = nc

    async def put(
        self,
        *,
        stream: str,
        consumer: str,
        stream_seq: int,
        subject: str,
        data: bytes,
        reason: str,
        detail: str,
        deliveries: int,
    ) -> None:
        assert self.nc is not None, "DeadLetters used before the broker connected"
        headers = {
            # one DLQ entry per stream message, whichever path (handler or advisory) gets there first
            "Nats-Msg-Id": f"dlq:{stream}:{consumer}:{stream_seq}",
            DLQ_REASON: reason,
            "Gridcase-Dlq-Detail": detail[:2000],
            "Gridcase-Dlq-Subject": subject,
            "Gridcase-Dlq-Stream": stream,
            "Gridcase-Dlq-Stream-Seq": str(stream_seq),
            "Gridcase-Dlq-Deliveries": str(deliveries),
        }
        ack = await self.nc.jetstream().publish(dlq_subject(stream, consumer), data, headers=headers)
        if not ack.duplicate:
            self.count.labels(stream, consumer, reason).inc()
            log(
                logger,
                logging.WARNING,
                "dead-lettered",
                stream=stream,
                consumer=consumer,
                seq=stream_seq,
                reason=reason,
                detail=detail[:500],
            )

    async def watch_advisories(self, consumers: Sequence[ConsumerSpec]) -> list[Any]:
        """Copy messages that exhausted `max_deliver` or were terminated by anything else."""
        assert self.nc is not None
        subs = []
        for spec in consumers:
            for kind in ("MAX_DELIVERIES", "MSG_TERMINATED"):
                subject = f"$JS.EVENT.ADVISORY.CONSUMER.{kind}.{spec.stream}.{spec.durable}"

                async def on_advisory(msg: Any, kind: str = kind) -> None:
                    try:
                        adv = json.loads(msg.data)
                        stream, consumer, seq = adv["stream"], adv["consumer"], adv["stream_seq"]
                        raw = await self.nc.jetstream().get_msg(stream, seq)  # type: ignore[union-attr]
                    except Exception as exc:  # the message may be gone (limits); log and go on
                        log(logger, logging.ERROR, "advisory copy failed", kind=kind, error=repr(exc))
                        return
                    await self.put(
                        stream=stream,
                        consumer=consumer,
                        stream_seq=seq,
                        subject=raw.subject or "",
                        data=raw.data or b"",
                        reason="max_deliveries" if kind == "MAX_DELIVERIES" else "terminated",
                        detail=f"advisory {kind.lower()} after {adv.get('deliveries', '?')} deliveries",
                        deliveries=int(adv.get("deliveries") or 0),
                    )

                subs.append(await self.nc.subscribe(subject, cb=on_advisory))
        return subs


def _js_meta(raw: Any) -> Any | None:
    reply = getattr(raw, "reply", None) or ""
    if not reply.startswith("$JS.ACK."):
        return None
    try:
        return raw.metadata
    except Exception:
        return None


class ReliabilityMiddleware(BaseMiddleware):
    """Turns every failure into an explicit decision (DESIGN §4); nothing is dropped silently."""

    dead_letters: DeadLetters
    max_deliver: int

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        try:
            return await call_next(msg)
        except HandlerException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raw = msg.raw_message
            meta = _js_meta(raw)
            if meta is None:  # core request/reply: a command; answer the error
                return self._command_error(exc)
            await self._jetstream_failure(raw, meta, exc)
            raise AssertionError("unreachable") from exc

    def _command_error(self, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, DomainError):
            return exc.reply()
        if isinstance(exc, ValidationError):
            return {
                "ok": False,
                "error": {"code": "invalid", "message": "invalid command", "details": field_errors(exc)},
            }
        if isinstance(exc, PERMANENT):
            return {"ok": False, "error": {"code": "invalid", "message": str(exc)[:500]}}
        log(logger, logging.ERROR, "command failed", error=type(exc).__name__)
        logger.debug("command failure", exc_info=exc)
        return {"ok": False, "error": {"code": "internal", "message": "internal error, try again"}}

    async def _jetstream_failure(self, raw: Any, meta: Any, exc: Exception) -> None:
        delivered = int(meta.num_delivered or 1)
        where = dict(
            stream=meta.stream,
            consumer=meta.consumer,
            stream_seq=meta.sequence.stream,
            subject=raw.subject,
            data=raw.data,
            deliveries=delivered,
        )
        if isinstance(exc, PERMANENT):
            await self.dead_letters.put(reason="invalid", detail=_invalid_detail(exc), **where)
            raise AckMessage() from exc  # kept in the DLQ; the stream moves on
        if delivered >= self.max_deliver:
            await self.dead_letters.put(reason="exhausted", detail=f"{type(exc).__name__}: {exc}"[:500], **where)
            raise RejectMessage() from exc
        log(
            logger,
            logging.WARNING,
            "handler failed, will retry",
            consumer=meta.consumer,
            seq=meta.sequence.stream,
            delivered=delivered,
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )
        raise NackMessage(delay=backoff(delivered)) from exc


def _invalid_detail(exc: Exception) -> str:
    """What was wrong with a message that cannot be processed: field paths and messages, no values."""
    return json.dumps(field_errors(exc), ensure_ascii=False) if isinstance(exc, ValidationError) else str(exc)


# A whole-batch handler: raw bodies in; nothing, or one result per body (an exception = retry it).
BatchHandler = Callable[[list[bytes]], Awaitable["Sequence[Exception | None] | None"]]


async def fail_batch_member(dead_letters: DeadLetters, max_deliver: int, raw: Any, meta: Any, exc: Exception) -> None:
    """One message of a failed batch: retried with back-off, dead-lettered when exhausted.
    Never judged invalid: which member was at fault is not known."""
    delivered = int(meta.num_delivered or 1)
    if delivered >= max_deliver:
        await dead_letters.put(
            reason="exhausted", detail=f"batch failed: {type(exc).__name__}: {exc}"[:500],
            stream=meta.stream, consumer=meta.consumer, stream_seq=meta.sequence.stream,
            subject=raw.subject, data=raw.data, deliveries=delivered,
        )
        await raw.term()
    else:
        await raw.nak(delay=backoff(delivered))


# A batch still in hand after this many "working" acks is let go: redelivered after ack_wait.
WORKING_ACKS = 20


async def _keep_working(raws: list[Any], ack_wait_s: float) -> None:
    """While a batch is being handled, tell JetStream every third of the ack wait that it is
    (`+WPI`), so a slow batch — e.g. one waiting on documents a crashed writer's transaction
    holds — is not redelivered meanwhile: each such redelivery counted towards `max_deliver`,
    and a batch could be dead-lettered in seconds while it was still being retried."""
    for _ in range(WORKING_ACKS):
        await asyncio.sleep(ack_wait_s / 3)
        for raw in raws:
            with contextlib.suppress(Exception):  # a message acked meanwhile, or the connection gone
                await raw.in_progress()


async def _whole_batch(msg: Any) -> Any:
    """FastStream decoder of `consume_batches`: the batch message itself (bodies and acks)."""
    return msg


def reliability(dead_letters: DeadLetters, max_deliver: int) -> type[ReliabilityMiddleware]:
    return type(
        "BoundReliabilityMiddleware",
        (ReliabilityMiddleware,),
        {"dead_letters": dead_letters, "max_deliver": max_deliver},
    )


@dataclass
class Messaging:
    """The broker and everything bound to it for one service process."""

    service: str
    settings: Settings
    broker: NatsBroker
    dead_letters: DeadLetters
    consumed: Counter  # messages of whole-batch consumers by outcome (FastStream counts the others)
    consumers: list[ConsumerSpec] = field(default_factory=list)
    _advisory_subs: list[Any] = field(default_factory=list)
    _batches: set[asyncio.Task[None]] = field(default_factory=set)
    _js: tuple[Client, JetStreamContext] | None = None

    @property
    def nc(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        """One JetStream context per connection. A context subscribes to its own inbox for
        `publish_async`'s acks and never unsubscribes: a context per publish leaked a
        subscription each time — with its task, and the batch it was made for (~3.5 KB a
        report, found by tracemalloc)."""
        nc = self.nc
        if self._js is None or self._js[0] is not nc:
            self._js = (nc, nc.jetstream())
        return self._js[1]

    def consume(
        self, subject: str, *, durable: str | None = None, batch: int | None = None, hot: bool = False, **kw: Any
    ):
        """Decorator: a durable pull consumer of `subject` (DESIGN §4). `hot`: on the report →
        assigned path, so its pulls wait `fetch_wait_s` rather than `fetch_wait_background_s`."""
        return self._pull_subscriber(subject, durable, batch or self.settings.fetch_batch, FsAckPolicy.ACK, hot=hot, **kw)

    def consume_batches(self, subject: str, *, batch: int, overlap: int = 2, hot: bool = False, **kw: Any):
        """Decorator: a durable pull consumer whose handler takes each fetched batch whole, as
        a list of raw bodies — no per-message framework cost on a hot path.

        Up to `overlap` batches are in hand at once: the next is fetched and prepared while the
        previous one is being written. When the handler returns, its messages are acked — except
        those for which it returns an exception (a list with one entry per body, `None` for
        success): they are retried with back-off, then dead-lettered after `max_deliver`. If the
        handler raises, the whole batch is. Such a handler deals with bad input itself.
        """

        def decorate(handler: BatchHandler):
            async def on_messages(raws: list[Any]) -> Sequence[Exception | None] | None:
                return await handler([m.data for m in raws])

            self._batch_consumer(subject, batch, overlap, hot, on_messages, handler, **kw)
            return handler

        return decorate

    def consume_each(
        self, subject: str, model: Any, *, batch: int | None = None, hot: bool = False, **kw: Any
    ):
        """Decorator: like `consume` — the handler takes one `Envelope[model]` (`model` a contract
        model, or `dict[str, Any]` for an untyped event) and, if it has a `delivered` parameter,
        the delivery count — but each fetched batch is decoded and handed over in one go,
        without the framework's per-message cost (case events reach every service: this is
        where a busy system spends its time). The batch's handlers run concurrently, as
        `consume`'s do; one batch is handled while the next is fetched. Each message is then
        acked; or, invalid, dead-lettered at once; or, failed, retried with back-off and
        dead-lettered after `max_deliver`.
        """
        envelope = Envelope[model]  # type: ignore[valid-type]

        def decorate(handler: Callable[..., Awaitable[Any]]):
            with_deliveries = "delivered" in inspect.signature(handler).parameters

            async def one(raw: Any) -> Exception | None:
                try:
                    body = envelope.model_validate_json(raw.data)
                    if with_deliveries:
                        meta = _js_meta(raw)
                        await handler(body, delivered=int(meta.num_delivered or 1) if meta else 1)
                    else:
                        await handler(body)
                except Exception as exc:  # a cancellation propagates: unacked, redelivered
                    return exc
                return None

            async def on_messages(raws: list[Any]) -> list[Exception | None]:
                return list(await asyncio.gather(*(one(raw) for raw in raws)))

            self._batch_consumer(subject, batch or self.settings.fetch_batch, 1, hot, on_messages, handler, **kw)
            return handler

        return decorate

    def _batch_consumer(
        self,
        subject: str,
        batch: int,
        overlap: int,
        hot: bool,
        on_messages: Callable[[list[Any]], Awaitable[Sequence[Exception | None] | None]],
        named_after: Callable[..., Any],
        **kw: Any,
    ) -> None:
        # acked by `_run_batch` once the handler is done
        subscriber = self._pull_subscriber(
            subject, None, batch, FsAckPolicy.MANUAL, whole_batches=True, hot=hot, decoder=_whole_batch, **kw
        )
        _hand_over_what_is_there(subscriber)
        slots: list[asyncio.Semaphore] = []
        consumer = self.consumers[-1].durable

        async def take_batch(message: Any) -> None:
            if not slots:  # made on the running loop
                slots.append(asyncio.Semaphore(overlap))
            await slots[0].acquire()  # back-pressure: at most `overlap` batches in hand
            task = asyncio.create_task(self._run_batch(on_messages, message.raw_message, slots[0], consumer))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

        take_batch.__name__ = named_after.__name__  # the AsyncAPI channel is named after it
        take_batch.__doc__ = named_after.__doc__
        subscriber(take_batch)

    async def _run_batch(
        self,
        on_messages: Callable[[list[Any]], Awaitable[Sequence[Exception | None] | None]],
        raws: list[Any],
        slot: asyncio.Semaphore,
        consumer: str,
    ) -> None:
        try:
            working = asyncio.get_running_loop().create_task(_keep_working(raws, self.settings.ack_wait_s))
            try:
                results = await on_messages(raws)
            except asyncio.CancelledError:
                raise  # unacked: redelivered after ack_wait
            except Exception as exc:
                results = [exc] * len(raws)
            finally:
                working.cancel()
            results = list(results or [None] * len(raws))
            retried = [r for r in results if isinstance(r, Exception) and not isinstance(r, PERMANENT)]
            if retried:
                log(logger, logging.WARNING, "batch handler failed, will retry", consumer=consumer, size=len(raws),
                    failed=len(retried), error=type(retried[0]).__name__, detail=str(retried[0])[:200])
            for raw, result in zip(raws, results, strict=True):
                meta = _js_meta(raw) if isinstance(result, Exception) else None
                if meta is None:
                    await raw.ack()
                elif isinstance(result, PERMANENT):
                    await self.dead_letters.put(
                        reason="invalid", detail=_invalid_detail(result), stream=meta.stream, consumer=meta.consumer,
                        stream_seq=meta.sequence.stream, subject=raw.subject, data=raw.data,
                        deliveries=int(meta.num_delivered or 1),
                    )
                    await raw.ack()  # kept in the DLQ; the stream moves on
                else:
                    await fail_batch_member(self.dead_letters, self.settings.max_deliver, raw, meta, result)
            invalid = sum(isinstance(r, PERMANENT) for r in results)
            for outcome, n in (("done", len(raws) - len(retried) - invalid), ("retried", len(retried)), ("invalid", invalid)):
                if n:
                    self.consumed.labels(consumer, outcome).inc(n)
        finally:
            slot.release()

    async def drain_batches(self) -> None:
        """Let the batches in hand finish (and be acked) before the connection closes."""
        if self._batches:
            await asyncio.gather(*list(self._batches), return_exceptions=True)

    def _pull_subscriber(
        self,
        subject: str,
        durable: str | None,
        batch: int,
        ack_policy: FsAckPolicy,
        *,
        whole_batches: bool = False,
        hot: bool = False,
        **kw: Any,
    ):
        """FastStream's durable pull subscriber for the consumer spec of `subject`."""
        spec = self._consumer_spec(subject, durable, batch)
        wait = self.settings.fetch_wait_s if hot else self.settings.fetch_wait_background_s
        return self.broker.subscriber(
            subject,
            stream=JStream(spec.stream, declare=False),
            durable=spec.durable,
            config=spec.config(),
            pull_sub=PullSub(batch_size=batch, timeout=wait, batch=whole_batches),
            ack_policy=ack_policy,
            **kw,
        )

    def _consumer_spec(self, subject: str, durable: str | None, batch: int | None) -> ConsumerSpec:
        stream = stream_for(subject)
        spec = ConsumerSpec(
            stream=stream.name,
            durable=durable or durable_name(self.service, subject, self.settings.instance_of(self.service)),
            subject=subject,
            max_deliver=self.settings.max_deliver,
            ack_wait_s=self.settings.ack_wait_s,
            max_ack_pending=max(1024, 8 * (batch or self.settings.fetch_batch)),
        )
        self.consumers.append(spec)
        return spec

    def serve(self, subject: str, **kw: Any):
        """Decorator: a command endpoint (core request/reply) in this service's queue group."""
        return self.broker.subscriber(subject, queue=self.service, **kw)

    async def start(self) -> None:
        """Connect, declare streams (dev) and make every durable consumer match its spec."""
        await self.broker.connect()
        self.dead_letters.bind(self.nc)
        if self.settings.declare_streams:
            await declare_streams(self.js, replicas=self.settings.stream_replicas)
        if self.settings.manage_consumers:
            for spec in self.consumers:
                await ensure_consumer(self.js, spec)
        self._advisory_subs = await self.dead_letters.watch_advisories(self.consumers)


async def declare_streams(js: JetStreamContext, *, replicas: int = 1, streams: Sequence[Stream] = STREAMS) -> None:
    """Create or update the contract's streams (file storage, dedupe window 2 min)."""
    for stream in streams:
        config = api.StreamConfig(
            name=stream.name,
            description=stream.description,
            subjects=list(stream.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable or bring an existing one's editable settings up to date.

    A durable keeps the config it was created with unless told otherwise, so a changed
    `max_deliver` or `ack_wait` would silently not apply without this step.
    """
    try:
        await js.add_consumer(spec.stream, spec.config())
    except nats.js.errors.BadRequestError as exc:
        log(logger, logging.WARNING, "consumer config not updatable", durable=spec.durable, error=str(exc))


class EventPublisher:
    """Publishes envelopes to JetStream; the event id is always the `Nats-Msg-Id`."""

    def __init__(self, messaging: Messaging, *, timeout: float = 10.0) -> None:
        self.messaging = messaging
        self.timeout = timeout

    async def publish_raw(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish `(subject, event id, body)` triples; returns when all are stored."""
        if not items:
            return
        js = self.messaging.js
        futures = [
            await js.publish_async(subject, body, headers={"Nats-Msg-Id": event_id})
            for subject, event_id, body in items
        ]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=self.timeout)

    async def publish(self, events: Sequence[Envelope[Any]]) -> None:
        await self.publish_raw([(e.type, e.id, e.to_json()) for e in events])


def nats_servers(url: str) -> list[str]:
    """`GRIDCASE_NATS_URL` may list several cluster nodes, comma-separated."""
    return [u.strip() for u in url.split(",") if u.strip()]


def _fetch_timeouts_as_nats_errors() -> None:
    """Work around a nats-py × FastStream mismatch (nats-py 2.x, FastStream 0.7).

    `PullSubscription.fetch` may raise a bare `asyncio.TimeoutError` when its deadline runs out
    mid-request, while FastStream's pull loops catch only `nats.errors.TimeoutError`. The loop
    task then dies and is restarted by FastStream's supervisor, and a batch it had partly
    collected is dropped — those messages come back only after `ack_wait`. Raising the nats
    error (a subclass of `asyncio.TimeoutError`, so nothing else changes) keeps the loop alive.
    """
    pull_subscription = nats.js.client.JetStreamContext.PullSubscription
    if getattr(pull_subscription.fetch, "gridcase_patched", False):
        return
    original = pull_subscription.fetch

    @functools.wraps(original)
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    fetch.gridcase_patched = True  # type: ignore[attr-defined]
    pull_subscription.fetch = fetch


def _hand_over_what_is_there(subscriber: Any) -> None:
    """One fetch per turn for a whole-batch pull subscriber (FastStream 0.7).

    FastStream's batch loop fetches again and again until the batch is full or the fetch wait
    has passed, so at a trickle every message waits the whole wait (the report → assigned path
    paid ~15 ms at the median, 30 ms at worst, at intake alone). nats-py's `fetch` already
    returns as soon as messages are there — all that are, up to the batch — and waits the full
    time only when there are none. Under load batches still fill: messages gather while the
    batches in hand are handled. Set on the instance, so only our whole-batch consumers change.
    """
    if not callable(getattr(subscriber, "_consume_pull", None)):
        raise RuntimeError("FastStream's pull subscriber has no _consume_pull: revisit _hand_over_what_is_there")

    async def consume_pull() -> None:
        while subscriber.running:
            try:
                messages = await subscriber.subscription.fetch(
                    batch=subscriber.pull_sub.batch_size, timeout=subscriber.pull_sub.timeout
                )
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.ConnectionClosedError, nats.js.errors.ServiceUnavailableError):
                await asyncio.sleep(0.1)  # unacked messages come back after ack_wait
                continue
            if messages and subscriber.running:
                await subscriber.consume(messages)

    subscriber._consume_pull = consume_pull


def make_broker(settings: Settings, service: str, registry: CollectorRegistry) -> Messaging:
    _fetch_timeouts_as_nats_errors()
    dead_letters = DeadLetters(registry)
    broker = NatsBroker(
        nats_servers(settings.nats_url),
        name=f"gridcase-{service}",
        middlewares=(
            NatsPrometheusMiddleware(registry=registry, app_name=service, metrics_prefix="gridcase_faststream"),
            reliability(dead_letters, settings.max_deliver),
        ),
        # FastStream logs every message at the broker's log level: keep that below INFO.
        log_level=logging.DEBUG,
        graceful_timeout=8.0,
        max_reconnect_attempts=-1,
    )
    consumed = Counter(
        "gridcase_batch_consumed_messages",
        "Messages handled by whole-batch consumers, by outcome (done, retried, invalid)",
        ["consumer", "outcome"],
        registry=registry,
    )
    return Messaging(service=service, settings=settings, broker=broker, dead_letters=dead_letters, consumed=consumed)


__all__ = [
    "ConsumerSpec",
    "DeadLetters",
    "EventPublisher",
    "Messaging",
    "ReliabilityMiddleware",
    "backoff",
    "declare_streams",
    "durable_name",
    "ensure_consumer",
    "make_broker",
    "nats",
]
