"""`gridcase routing …`: operator tools of the routing service.

  gridcase routing load-directory FILE [--nats-url URL]   load a directory document (JSON or YAML)
  gridcase routing check-policy FILE                      validate a policy file, naming any bad key
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def main(argv: list[str]) -> int:
    from shared.settings import Settings

    parser = argparse.ArgumentParser(prog="gridcase routing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load-directory")
    load.add_argument("file")
    load.add_argument("--nats-url", default=Settings().nats_url)
    check = sub.add_parser("check-policy")
    check.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "check-policy":
        from shared.policy import PolicyError, load_policy

        try:
            load_policy(args.file)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print("policy ok")
        return 0
    from shared.cli import load_document, request
    from shared.contract.subjects import DIRECTORY_LOAD

    reply = asyncio.run(request(args.nats_url, DIRECTORY_LOAD, load_document(args.file)))
    print(json.dumps(reply, ensure_ascii=False, indent=2))
    return 0 if reply.get("ok") else 1
