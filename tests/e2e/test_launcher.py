"""`gridcase up`: the embedded stack and five service processes, ready fast, stopped cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo.screenshot import REPO, demo_stack
from shared.contract.subjects import SERVICE_PORTS
from shared.embedded import port_open
from shared.launcher import free_port_offset

pytestmark = pytest.mark.e2e


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


def log_tails(data: Path, lines: int = 8) -> str:
    """The end of every process log, to see why a start was slow."""
    out = []
    for log in sorted((data / "logs").glob("*.log")):
        out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(out)


def processes_of(data: Path) -> list[int]:
    """Live processes started for this data dir (by command line or GRIDCASE_DATA_DIR)."""
    needle = str(data.resolve()).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                if alive(int(proc.name)):
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(180)
def test_up_is_ready_quickly_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    offset = free_port_offset()
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
            assert ready_after < 20, f"not ready within 20 s (attempt {attempt})\n{log_tails(tmp_path / 'data')}"
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
        assert len(pids) == 8, out  # nats, two databases, five services
        time.sleep(0.3)
        assert not [p for p in pids if alive(p)], f"processes left behind: {out}"
        assert not any(port_open(p + offset) for p in SERVICE_PORTS.values())
        assert (tmp_path / "data" / "logs" / "routing.log").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("started", ["secantusdb", "stats"])
def test_ctrl_c_while_starting_stops_at_once(tmp_path: Path, started: str) -> None:
    """A Ctrl-C before everything is ready does not sit out the start: everything stops."""
    data = tmp_path / "data"
    proc = start(data, free_port_offset())
    deadline = time.monotonic() + 20
    while not (data / "logs" / f"{started}.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    t_stop = time.monotonic()
    out, _ = proc.communicate(timeout=20)
    assert time.monotonic() - t_stop < 10, out
    assert "gridcase: stopped" in out, out
    time.sleep(0.3)
    assert processes_of(data) == [], out


@pytest.mark.timeout(240)
def test_make_run_shows_the_four_communities_live_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """What `make run` starts (`gridcase up --demo` with the minutes policy), tried as a new user
    would: within 2 minutes the dashboard and its API show cases of the demo's four communities;
    Ctrl-C stops every process, the simulator included."""
    data, offset = tmp_path / "data", free_port_offset()
    proc = subprocess.Popen(
        demo_stack(data, offset, rate=4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, cwd=REPO,
    )
    stats = f"http://127.0.0.1:{SERVICE_PORTS['stats'] + offset}"
    four = {"jianglin", "zhongshan", "fuyuan", "nankai"}
    seen: set[str | None] = set()  # None: cases nobody could place in a community (triage)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not four <= seen:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            status, body = get(stats + "/api/kpis?group_by=community")
            if status == 200:
                seen = {row["key"]["community"] for row in json.loads(body)["rows"] if (row.get("received") or 0) > 0}
            time.sleep(1)
        assert four <= seen <= four | {None}, f"{seen}\n{log_tails(data)}"
        status, page = get(stats + "/dashboard")
        assert status == 200 and b"<html" in page.lower()
        assert (data / "logs" / "simulator.log").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        t_stop = time.monotonic()
        out, _ = proc.communicate(timeout=20)
    assert time.monotonic() - t_stop < 10, out
    assert proc.returncode == 0, out
    assert f"{stats}/dashboard" in out  # where to look is printed
    time.sleep(0.3)
    assert processes_of(data) == [], out
