"""Declare the six JetStream streams of the contract on the compose cluster (one-shot).

Production leaves this to the NACK `Stream` resources in k8s/; compose runs it once as the
`nats-init` container with the `admin` user, using the same code the services use in
development (`shared.messaging.declare_streams`: file storage, 2 minute duplicate window),
with GRIDCASE_STREAM_REPLICAS (3) replicas. Idempotent: an existing stream is updated.
"""

from __future__ import annotations

import asyncio
import os

import nats

from shared.messaging import declare_streams


async def main() -> None:
    nc = await nats.connect(os.environ["GRIDCASE_NATS_URL"], max_reconnect_attempts=30)
    try:
        await declare_streams(
            nc.jetstream(timeout=10), replicas=int(os.environ.get("GRIDCASE_STREAM_REPLICAS", "3"))
        )
        for name in await nc.jetstream().streams_info():
            print(f"stream {name.config.name}: replicas={name.config.num_replicas}")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
