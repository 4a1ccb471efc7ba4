"""`gridcase mediation export <mediation_id> [--out FILE]`: print a dossier as Markdown.

Reads the mediation database directly (`GRIDCASE_MONGODB_URL`, `GRIDCASE_DATABASE_PREFIX`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pymongo import MongoClient

from shared.settings import Settings

from .domain import Dossier
from .export import render
from .store import DOSSIERS


def export(mediation_id: str, settings: Settings) -> str | None:
    client: MongoClient = MongoClient(settings.mongodb_url, tz_aware=True, serverSelectionTimeoutMS=10_000)
    try:
        doc = client[settings.database_name("mediation")][DOSSIERS].find_one({"_id": mediation_id})
    finally:
        client.close()
    return render(Dossier.model_validate(doc), settings.timezone) if doc else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridcase mediation", description="mediation tools")
    sub = parser.add_subparsers(dest="action", required=True)
    ex = sub.add_parser("export", help="print a mediation dossier (卷宗) as Markdown")
    ex.add_argument("mediation_id")
    ex.add_argument("--out", help="write to this file instead of standard output")
    args = parser.parse_args(argv)
    settings = Settings(service="mediation")
    text = export(args.mediation_id, settings)
    if text is None:
        print(f"mediation {args.mediation_id} not found", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
