"""Broker shims implementing the Publisher/Subscriber protocols.

| module | broker | extra | semantics |
| --- | --- | --- | --- |
| `shims.queue` | `queue.Queue` / `multiprocessing.Queue` | none | work queue |
| `shims.local` | in-process `LocalBroker` | none | fan-out |
| `shims.redis` | Redis pub/sub, list queue, Streams | `redis` | fan-out / queue / groups |
| `shims.zmq` | ZeroMQ PUB/SUB | `zmq` | fan-out |
| `shims.kafka` | Apache Kafka | `kafka` | consumer groups |
| `shims.rabbitmq` | RabbitMQ (AMQP 0-9-1) | `rabbitmq` | fan-out / work queue |

This package imports no broker client: import the one module you use.
"""
