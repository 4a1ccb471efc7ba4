"""`gridcase up --demo` (what `make run` does): load the demo directory, run the simulator in
the background, and show where to look plus a status line of cases flowing."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

from shared.embedded import Child

HERE = Path(__file__).parent


def start_demo(stack, *, rate: float = 1.0, seed: int | None = None) -> None:
    args = [
        sys.executable, "-m", "shared.cli", "simulate",
        "--rate", str(rate), "--duration", "inf",
        "--nats-url", stack.nats_url,
        "--directory", str(HERE / "directory.yaml"),
        "--load-directory", "--quiet",
    ]
    if seed is not None:
        args += ["--seed", str(seed)]
    child = Child("simulator", args, stack.logs / "simulator.log").start()
    stack.extras["simulator"] = child
    stats = stack.url("stats")
    print(
        "\n".join(
            [
                "",
                "gridcase demo is live — the four communities of the seed article (江林, 中山, 富原, 南开)",
                f"  dashboard       {stats}/dashboard",
                f"  KPIs            {stats}/api/kpis?group_by=community",
                "  metrics         " + "  ".join(stack.url(s, "/metrics") for s in stack.services),
                "  AsyncAPI        " + "  ".join(stack.url(s, "/docs/asyncapi") for s in stack.services),
                f"  logs            {stack.logs}/",
                f"  simulator       {rate:g} reports/s (clocks are minutes: escalations show within a few minutes)",
                "  stop            Ctrl-C",
                "",
            ]
        ),
        flush=True,
    )
    threading.Thread(target=_status_line, args=(stats,), daemon=True).start()


def _status_line(stats_url: str) -> None:
    """Every few seconds: one line of totals from the stats API (counts only, no personal data)."""
    while True:
        time.sleep(5)
        try:
            with urllib.request.urlopen(f"{stats_url}/api/kpis", timeout=3) as r:  # noqa: S310 - loopback
                t = json.loads(r.read()).get("totals", {})
        except Exception:
            continue
        print(
            f"\r[{time.strftime('%H:%M:%S')}] cases received {t.get('received', 0)}  assigned {t.get('assigned', 0)}  "
            f"escalated {t.get('escalated', 0)}  resolved {t.get('resolved', 0)}  open {t.get('open', 0)}  "
            f"overdue {t.get('overdue', 0)}",
            end="",
            flush=True,
        )
