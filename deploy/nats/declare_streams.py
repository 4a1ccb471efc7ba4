"""Declare the six JetStream streams of the contract on the compose cluster (one-shot).

Production leaves this to the NACK `Stream` resources in k8s/; compose runs it once as the
`nats-init` container with the `admin` user. Idempotent: an existing stream is updated.
Same settings as k8s/base/nats/streams.yaml: file storage, R3, 2 minute duplicate window.
"""

from __future__ import annotations

import asyncio
import os

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.contract.subjects import STREAMS

REPLICAS = int(os.environ.get("GRIDCASE_STREAM_REPLICAS", "3"))


def config(stream) -> StreamConfig:
    return StreamConfig(
        name=stream.name,
        description=stream.description,
        subjects=list(stream.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=REPLICAS,
        duplicate_window=120.0,
        discard=DiscardPolicy.OLD,
        max_age=0,  # the event log is kept: stats rebuilds by replaying it
    )


async def main() -> None:
    nc = await nats.connect(os.environ["GRIDCASE_NATS_URL"], max_reconnect_attempts=30)
    js = nc.jetstream(timeout=10)
    for stream in STREAMS:
        try:
            await js.stream_info(stream.name)
            await js.update_stream(config(stream))
            print(f"updated {stream.name}")
        except NotFoundError:
            await js.add_stream(config(stream))
            print(f"created {stream.name}")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
