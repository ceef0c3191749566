"""Publish a few objects; with --broker local the subscriber runs alongside."""

from __future__ import annotations

import threading

from _common import parse_args

from proxystore_stream import StreamProducer


def publish(publisher: object, topic: str, count: int) -> None:
    with StreamProducer[dict](publisher) as producer:  # type: ignore[arg-type]
        for i in range(count):
            producer.send(topic, {"i": i, "square": i * i}, metadata={"i": i})
            print(f"sent {i}")
        producer.close_topics(topic)


def main() -> None:
    args = parse_args(__doc__)
    if args.broker == "redis":
        from proxystore_stream.shims.redis import RedisStreamPublisher

        publish(RedisStreamPublisher("127.0.0.1", args.port), args.topic, args.count)
        return

    from simple_subscriber import subscribe

    from proxystore_stream.shims.local import LocalBroker
    from proxystore_stream.shims.local import LocalPublisher
    from proxystore_stream.shims.local import LocalSubscriber

    broker = LocalBroker()
    subscriber = LocalSubscriber(broker, args.topic)  # attached before anything is sent
    consumer = threading.Thread(target=subscribe, args=(subscriber,))
    consumer.start()
    publish(LocalPublisher(broker), args.topic, args.count)
    consumer.join(timeout=30)


if __name__ == "__main__":
    main()
