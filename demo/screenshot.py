"""The README's dashboard screenshot, taken from the demo itself (`make screenshot`).

Starts what `make run` starts (`gridcase up --demo`, minutes policy) on free ports and a
throw-away data folder, lets the simulator run for `--seconds`, then photographs the
dashboard with headless Chromium (Debian's `chromium`, driven by Playwright) and stops
everything. Only counts and the demo's fictional units are on the page.

    python -m demo.screenshot [--seconds 240] [--rate 3] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from shared.contract.subjects import SERVICE_PORTS
from shared.launcher import free_port_offset

REPO = Path(__file__).resolve().parents[1]
# Debian's package (`make browser`); offline, so nothing that reaches out
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def demo_stack(data: str | Path, port_offset: int, rate: float) -> list[str]:
    """The command line of what `make run` starts, on a data folder and ports of its own."""
    return [sys.executable, "-m", "shared.cli", "up", "--demo", "--policy", str(REPO / "demo" / "policy-minutes.yaml"),
            "--rate", str(rate), "--data", str(data), "--port-offset", str(port_offset)]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return r.status == 200
    except OSError:
        return False


async def photograph(url: str) -> bytes:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1400})
            await page.goto(url)
            await page.wait_for_selector("#summary [data-field='received'] .value")
            await page.wait_for_timeout(1500)  # the first refresh fills every panel
            return await page.screenshot(full_page=True)
        finally:
            await browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240, help="how long the demo runs before the photo")
    ap.add_argument("--rate", type=float, default=3.0, help="demo reports per second")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    a = ap.parse_args(argv)
    offset = free_port_offset()
    dashboard = f"http://127.0.0.1:{SERVICE_PORTS['stats'] + offset}/dashboard"
    with tempfile.TemporaryDirectory(prefix="gridcase-screenshot-") as data:
        proc = subprocess.Popen(
            demo_stack(data, offset, a.rate),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not _ready(dashboard):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("the demo did not start", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            print(f"demo running; the photo is taken in {a.seconds:.0f} s", flush=True)
            time.sleep(a.seconds)
            a.out.write_bytes(asyncio.run(photograph(dashboard)))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
