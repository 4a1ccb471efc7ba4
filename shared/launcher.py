"""`gridcase up`: the embedded stack and the five services as child processes.

Start order: nats-server and two SecantusDB processes (unless external URLs are given; the
second holds the databases of mediation, dispatch and stats — see `shared.settings`), streams,
then the services; each process logs to `<data>/logs/<name>.log`. Ctrl-C or SIGTERM stops everything
in reverse order within 10 s. Starting again reuses the data.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .contract.subjects import SERVICE_PORTS, SERVICES
from .embedded import (
    Child,
    StartCancelled,
    free_port,
    mongo_healthy,
    mongo_url,
    nats_healthy,
    nats_server,
    port_open,
    secantus_server,
    wait_until,
)
from .settings import EMBEDDED_DB_PORT, EMBEDDED_SECOND_DB_PORT, SECOND_DB_SERVICES

DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_MONITOR = 8222


@dataclass
class StackConfig:
    data: Path = Path(".data")
    policy: Path | None = None
    nats_url: str | None = None
    mongodb_url: str | None = None
    # with an external `mongodb_url`: where mediation, dispatch and stats keep theirs (default: the same)
    second_mongodb_url: str | None = None
    port_offset: int = 0
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    database_prefix: str = "gridcase"

    def port(self, base: int) -> int:
        return base + self.port_offset


@dataclass
class Stack:
    """The running system; usable from tests as well as from the CLI."""

    config: StackConfig
    nats: Child | None = None
    db: Child | None = None
    db2: Child | None = None
    services: dict[str, Child] = field(default_factory=dict)
    extras: dict[str, Child] = field(default_factory=dict)  # e.g. the demo simulator
    nats_url: str = ""
    mongodb_url: str = ""
    second_mongodb_url: str = ""
    nats_monitor: int | None = None
    # set from a signal handler: start-up waits give up, so a stop never sits out a start
    cancelled: bool = False

    def _cancelled(self) -> bool:
        return self.cancelled

    @property
    def logs(self) -> Path:
        return self.config.data / "logs"

    def http_port(self, service: str) -> int:
        return self.config.port(SERVICE_PORTS[service])

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http_port(service)}{path}"

    # ---- infrastructure -------------------------------------------------------------
    def start_infrastructure(self) -> None:
        cfg = self.config
        cfg.data.mkdir(parents=True, exist_ok=True)
        if cfg.nats_url:
            self.nats_url = cfg.nats_url
        else:
            port, monitor = cfg.port(DEFAULT_NATS_PORT), cfg.port(DEFAULT_NATS_MONITOR)
            _require_free(port, "NATS")
            _require_free(monitor, "NATS monitoring")
            self.nats = nats_server(cfg.data / "nats", port, monitor, self.logs / "nats.log").start()
            self.nats_monitor = monitor
            self.nats_url = f"nats://127.0.0.1:{port}"
            wait_until(lambda: nats_healthy(monitor), 20, "nats-server", child=self.nats, cancelled=self._cancelled)
        if cfg.mongodb_url:
            self.mongodb_url = cfg.mongodb_url
            self.second_mongodb_url = cfg.second_mongodb_url or cfg.mongodb_url
        else:
            port, port2 = cfg.port(EMBEDDED_DB_PORT), cfg.port(EMBEDDED_SECOND_DB_PORT)
            _require_free(port, "database")
            _require_free(port2, "second database")
            self.db = secantus_server(cfg.data / "db", port, self.logs / "secantusdb.log").start()
            self.db2 = secantus_server(cfg.data / "db2", port2, self.logs / "secantusdb-2.log", name="secantusdb-2").start()
            self.mongodb_url, self.second_mongodb_url = mongo_url(port), mongo_url(port2)
        wait_until(lambda: mongo_healthy(self.mongodb_url), 60, "database", child=self.db, cancelled=self._cancelled)
        if self.second_mongodb_url != self.mongodb_url:
            wait_until(lambda: mongo_healthy(self.second_mongodb_url), 60, "second database", child=self.db2,
                       cancelled=self._cancelled)
        asyncio.run(self._declare_streams())

    async def _declare_streams(self) -> None:
        import nats

        from .messaging import declare_streams, nats_servers

        nc = await nats.connect(nats_servers(self.nats_url))
        try:
            await declare_streams(nc.jetstream())
        finally:
            await nc.close()

    # ---- services -------------------------------------------------------------------
    def service_env(self, service: str) -> dict[str, str]:
        env = {
            "GRIDCASE_SERVICE": service,
            "GRIDCASE_NATS_URL": self.nats_url,
            "GRIDCASE_MONGODB_URL": self.database_url(service),
            "GRIDCASE_HTTP_PORT": str(self.http_port(service)),
            "GRIDCASE_DATA_DIR": str(self.config.data.resolve()),
            "GRIDCASE_DATABASE_PREFIX": self.config.database_prefix,
            "GRIDCASE_DECLARE_STREAMS": "false",  # declared once above
            **self.config.extra_env,
        }
        if self.config.policy:
            env["GRIDCASE_POLICY_FILE"] = str(Path(self.config.policy).resolve())
        return env

    def database_url(self, service: str) -> str:
        return self.second_mongodb_url if service in SECOND_DB_SERVICES and self.second_mongodb_url else self.mongodb_url

    def start_service(self, service: str) -> Child:
        _require_free(self.http_port(service), f"{service} HTTP")
        child = Child(
            service,
            [sys.executable, "-m", "shared.cli", "run", service],
            self.logs / f"{service}.log",
            env=self.service_env(service),
        ).start()
        self.services[service] = child
        return child

    def start_services(self, timeout: float = 60) -> None:
        for service in self.config.services:
            self.start_service(service)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60, services: tuple[str, ...] | None = None) -> None:
        for service in services or self.config.services:
            child = self.services[service]

            def ready(service: str = service) -> bool:
                with urllib.request.urlopen(self.url(service, "/health/ready"), timeout=1) as r:  # noqa: S310
                    return r.status == 200

            try:
                wait_until(ready, timeout, f"{service} /health/ready", child=child, cancelled=self._cancelled)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; see {child.log_path}") from exc

    def start(self, timeout: float = 60) -> Stack:
        self.start_infrastructure()
        self.start_services(timeout)
        return self

    def stop(self) -> None:
        """Extras and services first (they drain), then the database, then NATS."""
        for child in self.extras.values():
            child.stop(timeout=3)
        for child in self.services.values():
            if child.alive() and child.proc:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 6
        for child in self.services.values():
            child.stop(timeout=max(0.1, deadline - time.monotonic()))
        for db in (self.db2, self.db):
            if db:
                db.stop(timeout=3)
        if self.nats:
            self.nats.stop(timeout=2)

    def status_table(self) -> str:
        rows = [("piece", "pid", "where")]
        if self.nats:
            rows.append(("nats-server", str(self.nats.pid), f"{self.nats_url}  monitor http://127.0.0.1:{self.nats_monitor}"))
        else:
            rows.append(("nats (external)", "-", _redact(self.nats_url)))
        if self.db:
            rows.append(("secantusdb", str(self.db.pid), f"{self.mongodb_url}  (intake, routing)"))
        else:
            rows.append(("mongodb (external)", "-", _redact(self.mongodb_url)))
        if self.db2:
            rows.append(("secantusdb-2", str(self.db2.pid), f"{self.second_mongodb_url}  ({', '.join(SECOND_DB_SERVICES)})"))
        elif self.second_mongodb_url and self.second_mongodb_url != self.mongodb_url:
            rows.append(("mongodb (external)", "-", _redact(self.second_mongodb_url)))
        for name, child in self.services.items():
            rows.append((name, str(child.pid), self.url(name)))
        for name, child in self.extras.items():
            rows.append((name, str(child.pid), str(child.log_path)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_offset(tries: int = 200) -> int:
    """A `--port-offset` whose every port (NATS, monitoring, database, services) is free now.

    All ports stay below the ephemeral range: a port the kernel may give to some outgoing
    connection in the meantime could not be bound by a server a moment later.
    """
    bases = (DEFAULT_NATS_PORT, DEFAULT_NATS_MONITOR, EMBEDDED_DB_PORT, EMBEDDED_SECOND_DB_PORT, *SERVICE_PORTS.values())
    ceiling = min(_ephemeral_floor(), 65536) - max(bases) - 1
    rng = random.Random()
    for _ in range(tries):
        off = rng.randrange(1000, max(1001, ceiling), 10)
        if all(not port_open(b + off) for b in bases):
            return off
    raise RuntimeError("no free port offset")


def _redact(url: str) -> str:
    """Never print credentials embedded in a URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _require_free(port: int, what: str) -> None:
    if port_open(port):
        raise SystemExit(
            f"port {port} ({what}) is in use: is another gridcase running? Use --port-offset N to run side by side."
        )


def run_foreground(stack: Stack, *, after_start=None) -> int:
    """Start, print the status, supervise until Ctrl-C/SIGTERM, stop in order."""

    def request_stop(signum, frame):  # noqa: ARG001
        stack.cancelled = True  # no exception from here: it could strike between spawn and bookkeeping

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        print(f"gridcase: starting (data in {stack.config.data})", flush=True)
        stack.start_infrastructure()
        stack.start_services()
        print(stack.status_table(), flush=True)
        print(f"logs: {stack.logs}/   stop: Ctrl-C", flush=True)
        if after_start and not stack.cancelled:
            after_start(stack)
        restarts: dict[str, int] = {}
        while not stack.cancelled:
            time.sleep(0.5)
            for name, child in list(stack.services.items()):
                if not child.alive() and not stack.cancelled:
                    restarts[name] = restarts.get(name, 0) + 1
                    print(f"gridcase: {name} exited (code {child.proc.returncode}); restarting", flush=True)
                    child.stop()
                    time.sleep(min(5, restarts[name]))
                    stack.start_service(name)
        return 0
    except StartCancelled:
        return 130
    except (TimeoutError, RuntimeError) as exc:
        print(f"gridcase: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("gridcase: stopping …", flush=True)
        stack.stop()
        print("gridcase: stopped", flush=True)


def default_stack_config(**kw) -> StackConfig:
    return StackConfig(**{k: v for k, v in kw.items() if v is not None})


__all__ = ["Stack", "StackConfig", "run_foreground", "free_port", "free_port_offset", "default_stack_config", "os"]
