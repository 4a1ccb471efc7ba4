"""Helpers for the NATS permission tests: a real nats-server with the rendered config."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors

from deploy.nats.render import password_var, render_server, users

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_password(user: str) -> str:
    return f"test-only-{user}-pw"


def password_env() -> dict[str, str]:
    """The environment the rendered config's `$GRIDCASE_NATS_<USER>_PASSWORD` variables read."""
    return {password_var(u).lstrip("$"): test_password(u) for u in users()}


@dataclass
class NatsServer:
    proc: subprocess.Popen
    url: str
    http: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(tmp: Path) -> NatsServer:
    port, http_port = free_port(), free_port()
    conf = tmp / "nats-server.conf"
    conf.write_text(
        render_server(
            cluster_nodes=1,
            host="127.0.0.1",
            port=port,
            http_port=http_port,
            store_dir=str(tmp / "jetstream"),
            server_name="gridcase-test",
        ),
        encoding="utf-8",
    )
    log = tmp / "nats-server.log"
    env = {"PATH": os.environ.get("PATH", ""), **password_env()}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(NATS_SERVER), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    server = NatsServer(proc, f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", log)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(
                f"{server.http}/healthz?js-enabled-only=true", timeout=1
            ) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"nats-server not ready:\n{log.read_text()}")
        time.sleep(0.05)


@dataclass
class Conn:
    """A nats-py connection that records the asynchronous errors the server reports."""

    user: str
    nc: nats.NATS
    errors: list[str] = field(default_factory=list)

    @property
    def js(self):
        return self.nc.jetstream(timeout=3)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def wait_violation(self, kind: str, subject: str, wait_s: float = 5.0) -> str:
        """Wait for the server's `-ERR Permissions Violation for <kind> to "<subject>"`.

        nats-py reports it only through error_cb (the connection stays open), so flush first:
        the server answers PUB/SUB before the PING, so the error is usually already here.
        """
        needle = f'for {kind} to "{subject}"'.lower()
        await self.nc.flush(timeout=wait_s)
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            for err in self.violations():
                if needle in err.lower():
                    return err
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"no violation {needle!r} for {self.user}; errors: {self.errors}"
                )
            await asyncio.sleep(0.02)

    async def request(self, subject: str, body: bytes, wait_s: float = 3.0):
        """Request/reply that tolerates the responder's SUB still being in flight.

        nats-py's flush() writes its PING straight to the socket, ahead of SUB lines still in
        its pending buffer, so "subscribed and flushed" does not yet mean "the server has the
        interest": retry on no-responders for a moment.
        """
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                return await self.nc.request(subject, body, timeout=wait_s)
            except nats.errors.NoRespondersError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.nc.close()


async def connect(url: str, user: str, password: str | None = None) -> Conn:
    errors: list[str] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url,
        user=user,
        password=password if password is not None else test_password(user),
        error_cb=error_cb,
        allow_reconnect=False,
        connect_timeout=5,
        max_reconnect_attempts=0,
    )
    return Conn(user, nc, errors)
