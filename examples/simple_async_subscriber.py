"""Print every object of the stream from asyncio until the publisher closes it."""

from __future__ import annotations

import asyncio

from _common import parse_args

from proxystore_stream import AsyncStreamConsumer


async def subscribe(subscriber: object) -> None:
    async with AsyncStreamConsumer[dict](subscriber, timeout=60) as consumer:  # type: ignore[arg-type]
        async for metadata, obj in consumer.iter_with_metadata():
            print(f"received {obj} with metadata {metadata}")
    print("stream ended")


async def main() -> None:
    args = parse_args(__doc__)
    if args.broker == "local":
        raise SystemExit("with --broker local, run simple_async_publisher.py: it runs both ends")
    from proxystore_stream.shims.redis import AsyncRedisStreamSubscriber

    await subscribe(
        AsyncRedisStreamSubscriber("127.0.0.1", args.port, args.topic, group="examples")
    )


if __name__ == "__main__":
    asyncio.run(main())
