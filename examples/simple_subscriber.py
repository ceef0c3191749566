"""Print every object of the stream until the publisher closes it."""

from __future__ import annotations

from _common import parse_args

from proxystore_stream import StreamConsumer


def subscribe(subscriber: object) -> None:
    with StreamConsumer[dict](subscriber, timeout=60) as consumer:  # type: ignore[arg-type]
        for metadata, obj in consumer.iter_with_metadata():
            print(f"received {obj} with metadata {metadata}")
    print("stream ended")


def main() -> None:
    args = parse_args(__doc__)
    if args.broker == "local":
        raise SystemExit("with --broker local, run simple_publisher.py: it runs both ends")
    from proxystore_stream.shims.redis import RedisStreamSubscriber

    subscribe(RedisStreamSubscriber("127.0.0.1", args.port, args.topic, group="examples"))


if __name__ == "__main__":
    main()
