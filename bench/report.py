"""Writes `bench/results/latest.json` and `bench/results/latest.md`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, Row, machine


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return f"{s} {unit}".strip()


def _met(row: Row) -> str:
    if row.status != "ok":
        return row.status
    m = row.met
    return "—" if m is None else ("yes" if m else "**no**")


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"# gridcase bench — {meta['finished_at']}",
        "",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {m.get('memory_gb')} GB RAM, Python {m.get('python')}; "
        f"mode: {'quick' if meta.get('quick') else 'full'}; suite took {meta.get('duration_s', 0):.0f} s.",
        "Servers: fresh nats-server (JetStream, file store) and two SecantusDB processes (the second for mediation, dispatch and stats in scenarios 1, 2, 6) on free loopback ports, shared by every scenario.",
        "",
        "| scenario | figure | target | met? | ratio to floor | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r.target is None else f"{r.op} {_fmt(r.target, r.unit)}"
        ratio = "—" if r.ratio_to_floor is None else f"{r.ratio_to_floor:.2f}"
        note = r.note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.scenario}: {r.metric} | {_fmt(r.figure, r.unit)} | {target} | {_met(r)} | {ratio} | {note} |")
    lines.append("")
    return "\n".join(lines)


def write(rows: list[Row], meta: dict[str, Any], out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "machine": machine(), "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    doc = {"meta": meta, "rows": [r.as_dict() for r in rows]}
    jp, mp = out_dir / "latest.json", out_dir / "latest.md"
    jp.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    mp.write_text(markdown(rows, meta), encoding="utf-8")
    return jp, mp
