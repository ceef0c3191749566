"""Publish a few objects from asyncio; with --broker local the subscriber runs alongside."""

from __future__ import annotations

import asyncio

from _common import parse_args

from proxystore_stream import AsyncStreamProducer


async def publish(publisher: object, topic: str, count: int) -> None:
    async with AsyncStreamProducer[dict](publisher) as producer:  # type: ignore[arg-type]
        for i in range(count):
            await producer.send(topic, {"i": i, "square": i * i}, metadata={"i": i})
            print(f"sent {i}")
        await producer.close_topics(topic)


async def main() -> None:
    args = parse_args(__doc__)
    if args.broker == "redis":
        from proxystore_stream.shims.redis import AsyncRedisStreamPublisher

        await publish(AsyncRedisStreamPublisher("127.0.0.1", args.port), args.topic, args.count)
        return

    from simple_async_subscriber import subscribe

    from proxystore_stream.shims.local import AsyncLocalPublisher
    from proxystore_stream.shims.local import AsyncLocalSubscriber
    from proxystore_stream.shims.local import LocalBroker

    broker = LocalBroker()
    subscriber = AsyncLocalSubscriber(broker, args.topic)
    consumer = asyncio.create_task(subscribe(subscriber))
    await publish(AsyncLocalPublisher(broker), args.topic, args.count)
    await asyncio.wait_for(consumer, 30)


if __name__ == "__main__":
    asyncio.run(main())
