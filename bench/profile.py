"""Profile a service process under load and save a text summary in bench/results/.

Two tools:
- py-spy (in the dev extra, installed by `make install`): attaches to a running pid, samples for N seconds,
  no restart needed. `start_profile(pid, name, seconds)` is what `python -m bench --profile
  routing` uses during scenario 1's steady run (it costs CPU on a 2-core box, so figures from
  a profiled run are a little low).
- pyinstrument (in the venv): cannot attach, so the service is started under it
  (`--tool pyinstrument`); the report is written when the service exits on SIGTERM.

Standalone: `.venv/bin/python -m bench.profile --service routing --seconds 30 --rate 600`
starts fresh servers and the stack, loads the directory, publishes reports at `--rate`/s and
profiles the service. `--pid PID --seconds 20` attaches to any process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .common import RESULTS_DIR, log


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def summarize_collapsed(raw: str, top: int = 30) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed ("raw") output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        total += count
        if frames:
            self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if total == 0:
        return "no samples\n"
    out = [f"samples: {total}", "", "== self time (top frames) =="]
    out += [f"{100 * c / total:6.1f}%  {f}" for f, c in self_c.most_common(top)]
    out += ["", "== inclusive time =="]
    out += [f"{100 * c / total:6.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out) + "\n"


@dataclass
class Profile:
    name: str
    proc: subprocess.Popen | None
    raw_path: Path
    txt_path: Path
    error: str = ""

    def wait(self, timeout: float = 120) -> Path:
        if self.proc is not None:
            try:
                _, err = self.proc.communicate(timeout=timeout)
                if self.proc.returncode and not self.raw_path.exists():
                    self.error = (err or b"").decode(errors="replace")[-1000:]
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.error = "py-spy timed out"
        if self.raw_path.exists():
            text = summarize_collapsed(self.raw_path.read_text(errors="replace"))
        else:
            text = f"no profile: {self.error or 'py-spy not available (pip install py-spy into .venv)'}\n"
        self.txt_path.write_text(f"# py-spy profile of {self.name}\n{text}", encoding="utf-8")
        return self.txt_path


def start_profile(pid: int, name: str, seconds: float, out_dir: Path = RESULTS_DIR, rate: int = 50) -> Profile:
    """Start py-spy on `pid` for `seconds` in the background; `.wait()` writes the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw, txt = out_dir / f"profile-{name}-{stamp}.collapsed", out_dir / f"profile-{name}-{stamp}.txt"
    tool = py_spy()
    if tool is None:
        return Profile(name, None, raw, txt, "py-spy not installed: .venv/bin/pip install py-spy")
    args = [tool, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
            "--format", "raw", "--output", str(raw), "--nonblocking"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Profile(name, proc, raw, txt)


def pyinstrument_args(service: str, out: Path) -> list[str]:
    """argv that runs a service under pyinstrument (text report written at exit)."""
    return [sys.executable, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(out),
            "-m", "shared.cli", "run", service]


async def _drive(service: str, seconds: float, rate: float, tool: str) -> Path:
    import nats

    from shared.contract.subjects import DIRECTORY_LOAD, INTAKE_REPORT
    from shared.embedded import Child
    from shared.launcher import Stack, StackConfig, free_port_offset

    from .common import (
        Infra,
        Options,
        Pacer,
        command,
        make_workdir,
        remove_workdir,
    )
    from .workload import Workload

    opts = Options()
    work = make_workdir(opts)
    infra = await asyncio.to_thread(lambda: Infra(work).start())
    stack = Stack(StackConfig(data=work / "stack", nats_url=infra.nats_url, mongodb_url=infra.mongodb_url,
                              second_mongodb_url=infra.second_mongodb_url,
                              port_offset=free_port_offset(), database_prefix="benchprof",
                              extra_env={"GRIDCASE_LOG_LEVEL": "WARNING"}))
    out = RESULTS_DIR / f"profile-{service}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    try:
        await asyncio.to_thread(stack.start_infrastructure)
        if tool == "pyinstrument":
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            for s in stack.config.services:
                if s == service:
                    child = Child(s, pyinstrument_args(s, out), stack.logs / f"{s}.log", env=stack.service_env(s)).start()
                    stack.services[s] = child
                else:
                    stack.start_service(s)
            await asyncio.to_thread(stack.wait_ready, 90)
        else:
            await asyncio.to_thread(stack.start_services, 90)
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        wl = Workload.default()
        try:
            await command(nc, DIRECTORY_LOAD, wl.directory_json(), timeout=30)
        except Exception as exc:
            log(f"profile: directory not loaded ({type(exc).__name__})")
        pacer = Pacer(js, lambda i: (INTAKE_REPORT, *wl.report_envelope(i, prefix="prof"), ""))
        prof = None
        if tool == "py-spy":
            await pacer.run(rate, 3)  # warm up
            prof = start_profile(stack.services[service].pid or 0, service, seconds)
        log(f"profile: {service} under {rate:.0f} reports/s for {seconds:.0f}s with {tool}")
        await pacer.run(rate, seconds)
        await nc.close()
        if prof is not None:
            out = await asyncio.to_thread(prof.wait)
    finally:
        await asyncio.to_thread(stack.stop)
        infra.stop()
        remove_workdir(work, opts)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, help="attach py-spy to this process")
    ap.add_argument("--service", help="start a stack and profile this service under load")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=500, help="reports/s while profiling --service")
    ap.add_argument("--tool", choices=("py-spy", "pyinstrument"), default="py-spy")
    ap.add_argument("--name", default=None)
    a = ap.parse_args(argv)
    if a.pid:
        p = start_profile(a.pid, a.name or str(a.pid), a.seconds)
        print(p.wait())
        return 0
    if a.service:
        print(asyncio.run(_drive(a.service, a.seconds, a.rate, a.tool)))
        return 0
    ap.error("give --pid or --service")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
