"""``proxystore-stream soak``: stream for a fixed time and count every message.

::

    producer 0 ─┐                              ┌─▶ consumer 0
    producer 1 ─┼─▶ shim (--shim) [+ store] ───┼─▶ consumer 1
       …        ┘                              └─▶ …

Producers and consumers are separate processes (``spawn``), except for the
in-process ``local`` shim, whose producers and consumers are threads of one
process. With ``--async`` they use the async twins instead: each process
runs its role on an event loop, and ``local`` runs every role as a task of
one loop (`cli.soak_roles` holds the code that runs in the processes).
For `--seconds` every producer sends objects of `--size` bytes through
`StreamProducer` (or `AsyncStreamProducer`); each object starts with
(producer index, sequence number), and the same pair travels in its
metadata. Consumers read with `StreamConsumer` (or its twin), fetch
stored objects, check that every payload matches its metadata, and keep
one bitmap of received sequence numbers per producer.

Counting, at the end:

- work-queue shims (each message to exactly one consumer): unique = the
  union of all consumers' bitmaps; lost = sent - unique; duplicated =
  received - unique;
- fan-out shims (every consumer gets every message): the same per consumer,
  against everything sent, summed over consumers.

Flow control: producers keep at most `--max-in-flight` messages, and at most
`MAX_IN_FLIGHT_BYTES` of payload, sent but not yet received (by the slowest
consumer on fan-out shims), so the broker's backlog, and
so its memory, stays bounded whatever the relative speeds: the send rate is
the rate the consumers sustain. Every process samples its resident set size
(VmRSS, from /proc/self/status) every 0.1 s from the start of streaming,
after its connections are set up.

Everything is bounded in time: setup (`SETUP_SECONDS`), streaming
(`--seconds`), then draining until everything sent has arrived, nothing has
arrived for `DRAIN_IDLE_SECONDS` (Kafka: `KAFKA_DRAIN_IDLE_SECONDS`), or
`--drain-seconds` have passed.
Processes still running after that are terminated and reported as errors.

The run fails (exit code 1) if a message was lost (every shim here promises
delivery), a payload did not match its metadata, a duplicate arrived on a
shim that never redelivers, a stored object was left behind, or a process
failed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.console import Group
from rich.table import Table

from proxystore_stream.cli.soak_roles import MIN_SIZE
from proxystore_stream.cli.soak_roles import REPORT_SECONDS
from proxystore_stream.cli.soak_roles import SETUP_SECONDS
from proxystore_stream.cli.soak_roles import Flag
from proxystore_stream.cli.soak_roles import Shared as _Shared
from proxystore_stream.cli.soak_roles import Spec as _Spec
from proxystore_stream.cli.soak_roles import in_process_main
from proxystore_stream.cli.soak_roles import open_publisher
from proxystore_stream.cli.soak_roles import role_main

__all__ = [
    "MIN_SIZE",
    "SHIMS",
    "ProcessMemory",
    "ShimInfo",
    "SoakConfig",
    "SoakError",
    "SoakReport",
    "report_tables",
    "run_soak",
    "write_json",
]

DRAIN_IDLE_SECONDS = 3.0
"""After the producers finished, stop once nothing arrived for this long.

A shim may ask for longer (`ShimInfo.drain_idle`): a Kafka consumer that
lost its group membership delivers nothing until it has joined again.
"""
KAFKA_DRAIN_IDLE_SECONDS = 20.0
"""Kafka's idle wait: more than a session timeout (6 s) plus a group join."""

STORES = ("none", "file", "memory")


@dataclass(frozen=True)
class ShimInfo:
    """What the soak expects of one shim.

    Attributes:
        name: The `--shim` name.
        fanout: Every consumer gets every message (else: exactly one does).
        threads: Producers and consumers are threads of one process.
        redelivers: At-least-once: a message may be delivered again after a
            crash or reconnect, so duplicates are reported but do not fail
            the run. Shims that never redeliver fail on any duplicate.
        transport: What carries the messages, for the report.
        drain_idle: Seconds without a delivery after which draining stops.
    """

    name: str
    fanout: bool
    threads: bool
    redelivers: bool
    transport: str
    drain_idle: float = DRAIN_IDLE_SECONDS


SHIMS: dict[str, ShimInfo] = {
    info.name: info
    for info in (
        ShimInfo("queue", False, False, False, "multiprocessing.Queue (bounded)"),
        ShimInfo("local", True, True, False, "LocalBroker, block policy, threads"),
        ShimInfo(
            "kafka",
            True,
            False,
            True,
            "Kafka topic (1 partition), a group per consumer",
            KAFKA_DRAIN_IDLE_SECONDS,
        ),
        ShimInfo("zmq", True, False, False, "ZeroMQ PUB/SUB through an XSUB/XPUB forwarder"),
        ShimInfo("redis", True, False, False, "Redis pub/sub"),
        ShimInfo("redis-queue", False, False, True, "Redis list"),
        ShimInfo("redis-stream", False, False, True, "Redis stream, one consumer group"),
        ShimInfo("rabbitmq", True, False, False, "RabbitMQ fan-out exchange"),
        ShimInfo("rabbitmq-queue", False, False, True, "RabbitMQ durable work queue"),
    )
}
"""The shims `soak` can drive; every one of them promises delivery.

ZeroMQ promises it only below its high-water marks (`shims.zmq.DEFAULT_HWM`,
100,000 messages per peer); the soak's flow control keeps far fewer in
flight, so a ZeroMQ run must lose nothing either.
"""


MAX_IN_FLIGHT_BYTES = 16 << 20
"""Payload bytes sent but not yet received at most, whatever `--max-in-flight` says.

Half of Redis's default pub/sub output buffer limit (32 MiB), which
disconnects a subscriber that far behind.
"""


class SoakError(Exception):
    """A soak setting or shim that cannot be used (reported, exit code 2)."""


@dataclass
class SoakConfig:
    """What `run_soak` runs.

    Attributes:
        shim: Shim name (a key of `SHIMS`).
        seconds: Seconds the producers send for.
        producers: Producer processes (threads for ``local``).
        consumers: Consumer processes (threads for ``local``).
        size: Payload bytes per object (at least `MIN_SIZE`).
        store: ``none`` (inline), ``file`` or ``memory`` (``local`` only).
        batch_size: Objects per message.
        max_in_flight: Messages sent but not yet received at most (and at
            most `MAX_IN_FLIGHT_BYTES` of payload: `in_flight_limit`).
        drain_seconds: Seconds after `seconds` to wait for the last messages.
        directory: Where the file store writes (default: a temp dir).
        use_async: Drive the async twins (`AsyncStreamProducer`,
            `AsyncStreamConsumer`, the shim's async classes): each process
            runs its role on an event loop; ``local`` runs every role as a
            task of one loop.
    """

    shim: str = "queue"
    seconds: float = 60.0
    producers: int = 2
    consumers: int = 2
    size: int = 1024
    store: str = "none"
    batch_size: int = 1
    max_in_flight: int = 10_000
    drain_seconds: float = 30.0
    directory: str | None = None
    use_async: bool = False

    @property
    def in_flight_limit(self) -> int:
        """`max_in_flight`, lowered to `MAX_IN_FLIGHT_BYTES` of payload for large sizes."""
        return max(1, min(self.max_in_flight, MAX_IN_FLIGHT_BYTES // self.size))

    def check(self) -> ShimInfo:
        """Return the shim's info.

        Raises:
            SoakError: If a setting cannot work.
        """
        info = SHIMS.get(self.shim)
        if info is None:
            raise SoakError(f"unknown shim {self.shim!r}; soak runs {', '.join(SHIMS)}")
        if self.store not in STORES:
            raise SoakError(f"unknown store {self.store!r}; choose from {', '.join(STORES)}")
        if self.store == "memory" and not info.threads:
            raise SoakError(
                "the memory store is private to one process; use --store file, "
                "or --shim local (threads of one process)",
            )
        if self.size < MIN_SIZE:
            raise SoakError(f"--size must be at least {MIN_SIZE} bytes (index + sequence number)")
        for name in ("producers", "consumers", "batch_size", "max_in_flight"):
            if getattr(self, name) < 1:
                raise SoakError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.seconds > 0 or not self.drain_seconds > 0:
            raise SoakError("--seconds and --drain-seconds must be positive")
        return info


@dataclass
class ProcessMemory:
    """Resident set size of one process while streaming.

    Attributes:
        label: ``producer 0``, ``consumer 1``, or ``threads`` for ``local``.
        start_kb: RSS when streaming started (after setup), in KiB.
        peak_growth_kb: Highest RSS sampled minus `start_kb`.
        end_growth_kb: RSS when streaming ended minus `start_kb`.
    """

    label: str
    start_kb: int
    peak_growth_kb: int
    end_growth_kb: int


@dataclass
class SoakReport:
    """The outcome of one soak run.

    Attributes:
        config: What was run.
        transport: What carried the messages.
        fanout: Whether every consumer was to get every message.
        redelivers: Whether the shim may redeliver (duplicates allowed).
        sent: Messages (objects) the producers sent.
        expected: Deliveries expected: `sent`, times the consumers on fan-out.
        received: Deliveries counted by the consumers, duplicates included.
        unique: Distinct deliveries (per consumer on fan-out).
        lost: `expected` - `unique`.
        duplicated: `received` - `unique`.
        corrupt: Payloads whose bytes did not match their metadata.
        seconds: From the start of streaming to the last delivery.
        setup_seconds: Starting the processes and connecting.
        drain_seconds: From the end of sending to the end of receiving.
        store_leftover: Objects left in the file store (None: not checked).
        missing: What did not arrive, one line per consumer (fan-out) or
            per producer (work queue): how many, which sequence numbers,
            and whether they are the last ones sent (a tail that had not
            arrived yet) or holes in what arrived.
        processes: Memory of every process.
        errors: What went wrong in the processes, if anything.
    """

    config: SoakConfig
    transport: str
    fanout: bool
    redelivers: bool
    sent: int = 0
    expected: int = 0
    received: int = 0
    unique: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    drain_seconds: float = 0.0
    store_leftover: int | None = None
    missing: list[str] = field(default_factory=list)
    processes: list[ProcessMemory] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def messages_per_second(self) -> float:
        """Deliveries per second."""
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        """Payload megabytes (10^6 bytes) delivered per second."""
        return self.messages_per_second * self.config.size / 1e6

    def failures(self) -> list[str]:
        """Return why the run failed (empty if it passed)."""
        found = list(self.errors)
        if self.sent == 0:
            found.append("nothing was sent")
        if self.lost:
            found.append(f"{self.lost:,} of {self.expected:,} deliveries lost")
            found.extend(self.missing)
        if self.corrupt:
            found.append(f"{self.corrupt:,} payloads did not match their metadata")
        if self.duplicated and not self.redelivers:
            found.append(f"{self.duplicated:,} duplicates on a shim that never redelivers")
        if self.store_leftover:
            found.append(f"{self.store_leftover:,} objects left in the store")
        return found

    def as_dict(self) -> dict[str, Any]:
        """Return the report with its rates and verdict, for JSON."""
        data = asdict(self)
        data["messages_per_second"] = self.messages_per_second
        data["mb_per_second"] = self.mb_per_second
        data["failures"] = self.failures()
        data["ok"] = not data["failures"]
        return data


# --- in the parent -------------------------------------------------------------


def _redis_url() -> str:
    return os.environ.get("PSS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _kafka_bootstrap() -> str:
    return os.environ.get("PSS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _rabbitmq_url() -> str:
    return os.environ.get("PSS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _preflight(spec: _Spec) -> None:
    """Import the shim and reach its broker once, so setup errors are one line."""
    from proxystore_stream.exceptions import BrokerConnectionError

    if spec.shim in ("queue", "local"):
        return
    try:
        # The sync publisher, whatever the run uses: one connect and close.
        blank = _Shared(None, None, None, None, None, None)
        open_publisher(replace(spec, use_async=False), blank).close()
    except BrokerConnectionError as exc:
        raise SoakError(f"cannot reach the broker of {spec.shim!r}: {exc}") from None


def _cleanup(spec: _Spec) -> None:
    """Delete what the run left in the broker (best effort)."""
    with contextlib.suppress(Exception):
        if spec.shim.startswith("redis"):
            import redis

            with redis.Redis.from_url(spec.redis_url) as client:
                client.delete(spec.topic)
        elif spec.shim == "kafka":
            from proxystore_stream.shims.kafka import delete_topics

            delete_topics(spec.kafka_bootstrap, [spec.topic])
        elif spec.shim.startswith("rabbitmq"):
            import pika

            from proxystore_stream.shims.rabbitmq import DEFAULT_PREFIX

            connection = pika.BlockingConnection(pika.URLParameters(spec.rabbitmq_url))
            try:
                channel = connection.channel()
                if spec.shim == "rabbitmq":
                    channel.exchange_delete(DEFAULT_PREFIX + spec.topic)
                else:
                    channel.queue_delete(DEFAULT_PREFIX + spec.topic)
            finally:
                connection.close()


class _Collector:
    """Reads the processes' reports from the results queue."""

    def __init__(self, results: Any) -> None:
        self.results = results
        self.ready: set[str] = set()
        self.done: dict[str, dict[str, Any]] = {}
        self.memory: dict[str, dict[str, int] | None] = {}
        self.errors: dict[str, str] = {}

    def poll(self, timeout: float) -> None:
        """Take every report that arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, label, payload = self.results.get(
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            except queue_module.Empty:
                return
            if kind == "ready":
                self.ready.add(label)
            elif kind == "memory":
                self.memory[label] = payload
            elif kind == "error":
                self.errors[label] = payload
            else:
                self.done[label] = payload


def _popcount(bitmap: bytes) -> int:
    return int.from_bytes(bitmap, "little").bit_count()


def _count(report: SoakReport, spec: _Spec, done: dict[str, dict[str, Any]]) -> None:
    """Fill the sent/received/lost/duplicated counts from the processes' reports."""
    sent = [done.get(f"producer {i}", {}).get("sent", 0) for i in range(spec.producers)]
    consumers = [done[f"consumer {i}"] for i in range(spec.consumers) if f"consumer {i}" in done]
    report.sent = sum(sent)
    report.received = sum(c["received"] for c in consumers)
    report.corrupt = sum(c["corrupt"] for c in consumers)
    if spec.fanout:
        report.expected = report.sent * spec.consumers
        report.unique = sum(_popcount(b) for c in consumers for b in c["bitmaps"])
        for index, c in enumerate(consumers):
            for producer, bitmap in enumerate(c["bitmaps"]):
                arrived = int.from_bytes(bitmap, "little")
                where = f"consumer {index}, from producer {producer}"
                report.missing.extend(_missing(where, arrived, sent[producer]))
    else:
        report.expected = report.sent
        for producer in range(spec.producers):
            union = 0
            for c in consumers:
                union |= int.from_bytes(c["bitmaps"][producer], "little")
            report.unique += union.bit_count()
            report.missing.extend(_missing(f"producer {producer}", union, sent[producer]))
    report.lost = max(0, report.expected - report.unique)
    report.duplicated = max(0, report.received - report.corrupt - report.unique)


def _missing(where: str, arrived: int, sent: int) -> list[str]:
    """Describe which of sequence numbers 0..sent-1 are not set in `arrived` ([] if none)."""
    absent = ~arrived & ((1 << sent) - 1)
    count = absent.bit_count()
    if not count:
        return []
    first = (absent & -absent).bit_length() - 1
    last = absent.bit_length() - 1
    tail = count == sent - first  # everything from the first gap on is missing
    shape = "the last ones sent" if tail else "holes in what arrived"
    return [f"{where}: {count:,} missing, seq {first:,}..{last:,} ({shape})"]


def _processes(spec: _Spec, shared: _Shared, ctx: Any) -> list[Any]:
    if spec.shim == "local":
        return [ctx.Process(target=in_process_main, args=(spec, shared), name="pss-soak-threads")]
    # Consumers first: they subscribe before anything is sent.
    roles = [("consumer", i) for i in range(spec.consumers)]
    roles += [("producer", i) for i in range(spec.producers)]
    return [
        ctx.Process(
            target=role_main,
            args=(spec, shared, role, index),
            name=f"pss-soak-{role}-{index}",
        )
        for role, index in roles
    ]


def _progress_text(shared: _Shared, phase: str) -> str:
    return f"{phase}: sent {sum(shared.sent):,}, received {sum(shared.received):,}"


def run_soak(config: SoakConfig, console: Console | None = None) -> SoakReport:
    """Run a soak and return its report (see the module docstring).

    Args:
        config: What to run.
        console: Where progress goes (default: a new stdout console).

    Raises:
        SoakError: If a setting cannot work or the broker cannot be reached.
        MissingDependencyError: If the shim's extra is not installed.
    """
    info = config.check()
    console = console or Console()
    base = Path(tempfile.mkdtemp(prefix="pss-soak-", dir=config.directory))
    spec = _Spec(
        shim=config.shim,
        topic=f"soak-{uuid.uuid4().hex[:12]}",
        size=config.size,
        store=config.store,
        store_dir=str(base / "store"),
        batch_size=config.batch_size,
        producers=config.producers,
        consumers=config.consumers,
        max_in_flight=config.in_flight_limit,
        seconds=config.seconds,
        fanout=info.fanout,
        redis_url=_redis_url(),
        rabbitmq_url=_rabbitmq_url(),
        use_async=config.use_async,
        kafka_bootstrap=_kafka_bootstrap(),
    )
    report = SoakReport(config, info.transport, info.fanout, info.redelivers)
    forwarder = None
    try:
        if spec.shim == "zmq":
            forwarder, spec = _start_forwarder(spec)
        _preflight(spec)
        _run(spec, config, report, console)
        if config.store == "file" and not info.fanout:
            store_dir = Path(spec.store_dir)
            report.store_leftover = len(list(store_dir.iterdir())) if store_dir.is_dir() else 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
        _cleanup(spec)
        if forwarder is not None:
            forwarder.stop()
    return report


def _start_forwarder(spec: _Spec) -> tuple[Any, _Spec]:
    """Start the ZeroMQ forwarder every producer and consumer connects to.

    Returns the forwarder and `spec` with its two endpoints (free loopback
    ports, picked by binding port 0).
    """
    from proxystore_stream.shims.zmq import ZeroMQForwarder

    forwarder = ZeroMQForwarder("tcp://127.0.0.1:0", "tcp://127.0.0.1:0").start()
    return forwarder, replace(spec, zmq_frontend=forwarder.frontend, zmq_backend=forwarder.backend)


def _run(spec: _Spec, config: SoakConfig, report: SoakReport, console: Console) -> None:
    ctx = multiprocessing.get_context("spawn")
    shared = _Shared(
        results=ctx.Queue(),
        go=Flag(ctx),
        stop=Flag(ctx),
        sent=ctx.RawArray("q", spec.producers),
        received=ctx.RawArray("q", spec.consumers),
        # Room for every message in flight, so a put never waits in practice.
        queue=ctx.Queue(maxsize=2 * spec.max_in_flight) if spec.shim == "queue" else None,
    )
    processes = _processes(spec, shared, ctx)
    collector = _Collector(shared.results)
    roles = spec.producers + spec.consumers
    began = time.monotonic()
    try:
        for process in processes:
            process.start()
        with console.status("starting processes", spinner="dots") as status:
            while len(collector.ready) < roles and time.monotonic() < began + SETUP_SECONDS:
                collector.poll(0.1)
                if collector.errors or not all(p.is_alive() for p in processes):
                    break
            if len(collector.ready) < roles:
                report.errors.append(f"only {len(collector.ready)} of {roles} roles got ready")
                return
            start = time.monotonic()
            report.setup_seconds = start - began
            shared.go.set()
            hard_deadline = start + spec.seconds + config.drain_seconds
            producers = [f"producer {i}" for i in range(spec.producers)]
            while not all(p in collector.done or p in collector.errors for p in producers):
                if time.monotonic() > hard_deadline:
                    break
                collector.poll(0.25)
                left = max(0.0, start + spec.seconds - time.monotonic())
                status.update(_progress_text(shared, f"streaming, {left:.0f} s left"))
            sent_done = time.monotonic()
            expected = sum(collector.done.get(p, {}).get("sent", 0) for p in producers)
            if spec.fanout:
                expected *= spec.consumers
            last_total, last_change = -1, time.monotonic()
            while time.monotonic() < hard_deadline:
                total = sum(shared.received)
                if total >= expected or collector.errors:
                    break
                if total != last_total:
                    last_total, last_change = total, time.monotonic()
                elif time.monotonic() - last_change > SHIMS[spec.shim].drain_idle:
                    break
                status.update(_progress_text(shared, "draining"))
                collector.poll(0.1)
            shared.stop.set()
            stopped = time.monotonic()
            report.drain_seconds = stopped - sent_done
            status.update(_progress_text(shared, "collecting reports"))
            while time.monotonic() < stopped + REPORT_SECONDS and (
                len(collector.memory) < len(processes) or not _all_reported(collector, spec)
            ):
                collector.poll(0.1)
                if not any(p.is_alive() for p in processes):
                    collector.poll(0.5)
                    break
        last = max((d.get("last", 0.0) for d in collector.done.values()), default=0.0)
        report.seconds = max(0.0, last - start) if last else 0.0
        _count(report, spec, collector.done)
    finally:
        shared.stop.set()
        shared.go.set()  # a process still waiting to start gives up at once
        _reap(processes, report)
        report.errors.extend(f"{label}: {error}" for label, error in collector.errors.items())
        report.processes = [
            ProcessMemory(label, m["start_kb"], m["peak_growth_kb"], m["end_growth_kb"])
            for label, m in sorted(collector.memory.items())
            if m is not None
        ]
        if shared.queue is not None:
            shared.queue.cancel_join_thread()
            shared.queue.close()


def _all_reported(collector: _Collector, spec: _Spec) -> bool:
    labels = [f"producer {i}" for i in range(spec.producers)]
    labels += [f"consumer {i}" for i in range(spec.consumers)]
    return all(label in collector.done or label in collector.errors for label in labels)


def _reap(processes: list[Any], report: SoakReport) -> None:
    """Join every process; terminate (by its own handle) any that hangs."""
    deadline = time.monotonic() + 10.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            report.errors.append(f"{process.name} did not exit in time and was terminated")
            process.terminate()
            process.join(5.0)
        elif process.exitcode not in (0, None):
            report.errors.append(f"{process.name} exited with code {process.exitcode}")


# --- output --------------------------------------------------------------------


def _kib(kb: int) -> str:
    if abs(kb) >= 10 * 1024:
        return f"{kb / 1024:+,.0f} MiB"
    return f"{kb:+,} KiB"


def report_tables(report: SoakReport) -> Group:
    """Return the counts table and the memory table of a report."""
    config = report.config
    if SHIMS[config.shim].threads:
        roles = "tasks of one event loop" if config.use_async else "threads"
    else:
        roles = "processes, async" if config.use_async else "processes"
    counts = Table(
        title=(
            f"soak {config.shim}, store {config.store}: {config.producers} producers x "
            f"{config.consumers} consumers ({roles}), {config.seconds:g} s x {config.size:,} B"
        ),
        caption=(
            f"{report.transport}; "
            + ("fan-out: every consumer gets every message" if report.fanout else "work queue")
            + ("; may redeliver (at-least-once)" if report.redelivers else "")
        ),
    )
    counts.add_column("sent", justify="right")
    counts.add_column("expected", justify="right")
    counts.add_column("received", justify="right")
    counts.add_column("unique", justify="right")
    counts.add_column("lost", justify="right")
    counts.add_column("duplicated", justify="right")
    counts.add_column("corrupt", justify="right")
    counts.add_column("msg/s", justify="right")
    counts.add_column("MB/s", justify="right")
    counts.add_column("drain", justify="right")
    counts.add_row(
        f"{report.sent:,}",
        f"{report.expected:,}",
        f"{report.received:,}",
        f"{report.unique:,}",
        f"{report.lost:,}",
        f"{report.duplicated:,}",
        f"{report.corrupt:,}",
        f"{report.messages_per_second:,.0f}",
        f"{report.mb_per_second:,.1f}",
        f"{report.drain_seconds:.1f} s",
    )
    memory = Table(title="resident set size while streaming (VmRSS)")
    memory.add_column("process")
    memory.add_column("at start", justify="right")
    memory.add_column("peak growth", justify="right")
    memory.add_column("end growth", justify="right")
    for process in report.processes:
        memory.add_row(
            process.label,
            f"{process.start_kb / 1024:,.1f} MiB",
            _kib(process.peak_growth_kb),
            _kib(process.end_growth_kb),
        )
    return Group(counts, memory)


def write_json(path: str, report: SoakReport) -> None:
    """Write the report as JSON to `path` (``-``: standard output)."""
    text = json.dumps(report.as_dict(), indent=2) + "\n"
    if path == "-":
        print(text, end="")
    else:
        Path(path).write_text(text)
