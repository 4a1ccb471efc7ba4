"""`gridcase up`: the embedded stack and five service processes, ready fast, stopped cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shared.contract.subjects import SERVICE_PORTS
from shared.embedded import port_open
from shared.launcher import DEFAULT_DB_PORT, DEFAULT_NATS_MONITOR, DEFAULT_NATS_PORT

pytestmark = pytest.mark.e2e


def free_offset() -> int:
    for _ in range(50):
        off = random.randint(20000, 30000)
        ports = [p + off for p in (DEFAULT_NATS_PORT, DEFAULT_NATS_MONITOR, DEFAULT_DB_PORT, *SERVICE_PORTS.values())]
        if all(p < 65000 and not port_open(p) for p in ports):
            return off
    raise RuntimeError("no free port range")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def start(data: Path, offset: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--data", str(data), "--port-offset", str(offset)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def pids_in(output: str) -> list[int]:
    pids = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            pids.append(int(parts[1]))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_up_is_ready_quickly_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    offset = free_offset()
    for attempt in (1, 2):  # the second start reuses the data
        t0 = time.monotonic()
        proc = start(tmp_path / "data", offset)
        urls = {svc: f"http://127.0.0.1:{port + offset}" for svc, port in SERVICE_PORTS.items()}
        try:
            deadline = t0 + 20
            while time.monotonic() < deadline:
                if all(get(u + "/health/ready")[0] == 200 for u in urls.values()):
                    break
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
            ready_after = time.monotonic() - t0
            assert ready_after < 20, f"not ready within 20 s (attempt {attempt})"
            for u in urls.values():
                assert get(u + "/health/live")[0] == 200
                status, body = get(u + "/metrics")
                assert status == 200 and b"# HELP" in body
                status, body = get(u + "/docs/asyncapi")
                assert status == 200 and b'"asyncapi"' in body
        finally:
            proc.send_signal(signal.SIGINT)
            t_stop = time.monotonic()
            out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - t_stop < 10, "stop took longer than 10 s"
        assert proc.returncode == 0, out
        pids = pids_in(out)
        assert len(pids) == 7, out  # nats, database, five services
        time.sleep(0.3)
        assert not [p for p in pids if alive(p)], f"processes left behind: {out}"
        assert not any(port_open(p + offset) for p in SERVICE_PORTS.values())
        assert (tmp_path / "data" / "logs" / "routing.log").exists()
