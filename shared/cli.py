"""The `gridcase` command.

  gridcase up [--data DIR] [--policy FILE] [--nats-url URL] [--mongodb-url URL] [--port-offset N] [--demo]
  gridcase run <service>                 one service in the foreground (what a container runs)
  gridcase directory load FILE           load a directory document (JSON or YAML)
  gridcase simulate --rate R --duration D [--seed S]
  gridcase docs [--check]                write (or check) docs/asyncapi/<service>.json and the event catalogue
  gridcase stats rebuild | gridcase mediation export <id> | …   service tools
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .contract.subjects import SERVICES

# service tools live with their service: `gridcase <name> …` → services.<name>.cli:main(argv)
SERVICE_TOOLS = {"stats", "mediation", "dispatch", "intake", "routing"}


def _up(args: argparse.Namespace) -> int:
    from .launcher import Stack, StackConfig, run_foreground

    config = StackConfig(
        data=Path(args.data),
        policy=Path(args.policy) if args.policy else None,
        nats_url=args.nats_url,
        mongodb_url=args.mongodb_url,
        port_offset=args.port_offset,
    )
    after_start = None
    if args.demo:
        from demo.live import start_demo  # the demo directory + simulator in the background

        after_start = lambda stack: start_demo(stack, rate=args.rate, seed=args.seed)  # noqa: E731
    return run_foreground(Stack(config), after_start=after_start)


def _run(args: argparse.Namespace) -> int:
    from .app import run_service
    from .settings import Settings

    run_service(args.service, Settings(service=args.service))
    return 0


async def request(nats_url: str, subject: str, data: Any, *, timeout: float = 30.0, subject_id: str | None = None) -> dict:
    """Send one command envelope and return the JSON reply."""
    import nats

    from .contract.envelope import Envelope

    env = Envelope.new(subject, data, source="/gridcase/cli", subject=subject_id)
    from .messaging import nats_servers

    nc = await nats.connect(nats_servers(nats_url))
    try:
        msg = await nc.request(subject, env.to_json(), timeout=timeout)
        return json.loads(msg.data)
    finally:
        await nc.close()


def load_document(path: str) -> Any:
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def _directory(args: argparse.Namespace) -> int:
    from .contract.subjects import DIRECTORY_LOAD

    reply = asyncio.run(request(args.nats_url, DIRECTORY_LOAD, load_document(args.file)))
    print(json.dumps(reply, ensure_ascii=False, indent=2))
    return 0 if reply.get("ok") else 1


def _simulate(args: argparse.Namespace) -> int:
    from demo.simulator import main as simulate_main

    return simulate_main(args.rest)


def _docs(args: argparse.Namespace) -> int:
    from .docs import write_docs

    stale = write_docs(Path(args.out), check=args.check)
    if args.check and stale:
        print("stale generated docs: " + ", ".join(stale) + " (run `make docs`)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICE_TOOLS and argv[0] != "run":
        module = importlib.import_module(f"services.{argv[0]}.cli")
        return int(module.main(argv[1:]) or 0)
    from .settings import Settings

    defaults = Settings()
    parser = argparse.ArgumentParser(prog="gridcase", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the embedded stack and all services")
    up.add_argument("--data", default=".data", help="data directory (default .data/)")
    up.add_argument("--policy", help="policy file (YAML/JSON, DESIGN §5)")
    up.add_argument("--nats-url", help="use this NATS instead of starting one")
    up.add_argument("--mongodb-url", help="use this MongoDB instead of starting SecantusDB")
    up.add_argument("--port-offset", type=int, default=0, help="add N to every port (run stacks side by side)")
    up.add_argument("--demo", action="store_true", help="load the demo directory and run the simulator")
    up.add_argument("--rate", type=float, default=1.0, help="demo reports per second")
    up.add_argument("--seed", type=int, default=None)
    up.set_defaults(fn=_up)

    run = sub.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=SERVICES)
    run.set_defaults(fn=_run)

    directory = sub.add_parser("directory", help="directory tools")
    dsub = directory.add_subparsers(dest="action", required=True)
    load = dsub.add_parser("load", help="load a directory document")
    load.add_argument("file")
    load.add_argument("--nats-url", default=defaults.nats_url)
    load.set_defaults(fn=_directory)

    simulate = sub.add_parser("simulate", help="play the city platforms and people on the ground", add_help=False)
    simulate.set_defaults(fn=_simulate)

    docs = sub.add_parser("docs", help="generate AsyncAPI files and the event catalogue")
    docs.add_argument("--out", default="docs")
    docs.add_argument("--check", action="store_true", help="fail if committed files are stale")
    docs.set_defaults(fn=_docs)

    args, rest = parser.parse_known_args(argv)
    args.rest = rest  # `simulate` hands its own options on to the simulator
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
