"""``proxystore-stream bench``: our path against the bare transport, same run.

For each payload size the bench pushes bytes payloads through

- **ours**: `StreamProducer.send` in one thread, `StreamConsumer` iteration
  in another (or, with ``--async``, the async twins as two tasks of one
  event loop), over the endpoints of the chosen shim's bench target;
- **ours sync** (with ``--async`` only): the sync twins again, in the same
  run and alternating round by round with the async path, so the async/sync
  ratio is a same-run ratio like the ratio to bare;
- **bare**: the broker's own client (`open_bare`) doing the same work in the
  same harness;
- **file** (with ``--store file``): plain file write + read + unlink of the
  same payloads in the same directory, the store's own "bare".

The sender stamps `time.perf_counter_ns()` into the first 8 bytes of every
payload (the same work on every path); the receiver records the arrival
(after resolving the proxy, for stored payloads) and the latency. The ratio
is our time per message over the bare time per message: lower is better,
below 1 is faster than bare.

With ``--topics K`` the same total count is split over K topics, each with
its own endpoints, producer and consumer: 2K threads on the sync path, 2K
tasks of one event loop on the async path. The async path keeps producer
and consumer on one loop (what an asyncio program does): giving each side
its own loop in its own thread, like the sync threads, was measured slower
for every shim tried (local, redis), because every hand-over then crosses
threads.

Every loop is bounded by a message count and by ``--seconds-limit``; a run
that stalls is reported as an error, never waited for forever.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import math
import os
import queue as queue_module
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn
from rich.progress import MofNCompleteColumn
from rich.progress import Progress
from rich.progress import TextColumn
from rich.progress import TimeElapsedColumn
from rich.table import Table

from proxystore_stream.cli.targets import TARGETS
from proxystore_stream.consumer import AsyncStreamConsumer
from proxystore_stream.consumer import StreamConsumer
from proxystore_stream.producer import AsyncStreamProducer
from proxystore_stream.producer import StreamProducer
from proxystore_stream.proxy import extract
from proxystore_stream.store.base import Store

__all__ = [
    "BenchConfig",
    "BenchError",
    "Measurement",
    "Ratios",
    "auto_count",
    "load_target",
    "parse_size",
    "parse_sizes",
    "run_bench",
]

STORES = ("none", "file", "memory", "redis")
DEFAULT_SIZES = "100,10KiB,1MiB,10MiB"
TOTAL_BYTES = 200 * 1024 * 1024
MAX_COUNT = 20_000
MIN_COUNT = 10
WARMUP = 16
# Extra seconds a run may take past --seconds-limit before it counts as stalled.
GRACE_SECONDS = 30.0
_STAMP = 8
# Deliveries a consumer loop takes at most per message sent (duplicates included).
_DELIVERY_BOUND = 2
_END = b""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


class BenchError(Exception):
    """A bench setting or target that cannot be used (reported, exit code 2)."""


logger = logging.getLogger(__name__)


def parse_size(text: str) -> int:
    """Parse ``100``, ``10KiB``, ``1MiB``, ``2MB``... into a byte count.

    Raises:
        ValueError: If `text` is not a size.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 100, 10KiB, 1MiB, 2MB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return size


def parse_sizes(text: str) -> list[int]:
    """Parse a comma-separated list of sizes (see `parse_size`)."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def format_size(size: int) -> str:
    """Return a short human form of a byte count (``10 KiB``)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def auto_count(size: int, seconds_limit: float) -> int:
    """Messages to send of one size: ~200 MB in all, at most 20,000.

    The time limit bounds the loops as well; this keeps the data volume
    reasonable before the clock does.
    """
    del seconds_limit  # The loops enforce it; kept for a smarter heuristic.
    return max(MIN_COUNT, min(MAX_COUNT, TOTAL_BYTES // size))


def load_target(shim: str) -> ModuleType:
    """Import the bench target module serving `shim`.

    Raises:
        BenchError: If the shim is unknown or its target does not exist yet.
        MissingDependencyError: If the shim's extra is not installed.
    """
    module_name = TARGETS.get(shim)
    if module_name is None:
        raise BenchError(
            f"unknown shim {shim!r}; known shims: {', '.join(sorted(TARGETS))}",
        )
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise BenchError(
                f"shim {shim!r} has no bench target yet ({module_name} is missing)",
            ) from None
        raise


@dataclass
class BenchConfig:
    """What `run_bench` measures.

    Attributes:
        shim: Shim name (a key of `TARGETS`).
        sizes: Payload sizes in bytes.
        count: Messages per size (None: `auto_count`).
        batch_size: Objects per message on our path.
        store: ``none`` (inline), ``file``, ``memory`` or ``redis``.
        use_async: Drive our path with the async twins, and measure the sync
            twins in the same run too (alternating) for the async/sync ratio.
        topics: With more than 1, also run K topics concurrently.
        seconds_limit: Seconds each measurement may send for at most.
        directory: Where the file store (and plain-file baseline) writes.
        repeat: Rounds per size; the fastest round of each path is kept.
    """

    shim: str = "queue"
    sizes: list[int] = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))
    count: int | None = None
    batch_size: int = 1
    store: str = "none"
    use_async: bool = False
    topics: int = 1
    seconds_limit: float = 10.0
    directory: str | None = None
    repeat: int = 3


@dataclass
class Measurement:
    """One path at one size.

    Attributes:
        path: ``ours``, ``ours-concurrent``, ``bare`` or ``file``; with
            ``--async`` also ``ours-sync`` and ``ours-concurrent-sync`` (the
            sync twins measured in the same run).
        label: Human description of the path.
        size: Payload bytes.
        count: Messages received in the timed phase.
        seconds: First send to last arrival.
        p50_us: Median latency in microseconds.
        p99_us: 99th percentile latency in microseconds.
        error: Why the run failed, if it did.
        round_per_message: Seconds per message of every round, in round
            order (inf for a round that failed), so ratios can be paired
            round by round (`Ratios.vs_bare_rounds`); this measurement is
            the fastest of them.
        duplicates: Objects delivered again (at-least-once brokers after a
            rebalance or reconnect), dropped by event id and not counted.
        cpu_seconds: CPU time of the whole bench process (every thread,
            including the client libraries' own) from first send to last
            arrival; less disturbed by other load than the wall time.
    """

    path: str
    label: str
    size: int
    count: int = 0
    seconds: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    error: str | None = None
    round_per_message: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    duplicates: int = 0

    @property
    def rounds(self) -> int:
        """Rounds measured (1 for a measurement that stands alone)."""
        return len(self.round_per_message) or 1

    @property
    def per_message(self) -> float:
        """Seconds per message (inf when nothing arrived)."""
        return self.seconds / self.count if self.count else float("inf")

    @property
    def messages_per_second(self) -> float:
        """Messages per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        """Process CPU microseconds per message (0 when nothing arrived)."""
        return self.cpu_seconds / self.count * 1e6 if self.count else 0.0

    @property
    def mb_per_second(self) -> float:
        """Payload megabytes (10^6 bytes) per second."""
        return self.messages_per_second * self.size / 1e6

    def as_dict(self) -> dict[str, Any]:
        """Return the measurement with its derived rates, for JSON."""
        data = asdict(self)
        # JSON has no infinity: a failed round is null.
        data["round_per_message"] = [
            x if math.isfinite(x) else None for x in self.round_per_message
        ]
        data["rounds"] = self.rounds
        data["messages_per_second"] = self.messages_per_second
        data["mb_per_second"] = self.mb_per_second
        data["cpu_us_per_message"] = self.cpu_us_per_message
        return data


class _Payloads:
    """Payloads of one size whose first 8 bytes are the send time."""

    def __init__(self, size: int) -> None:
        self.size = max(size, _STAMP)
        self._body = os.urandom(self.size - _STAMP)

    def make(self) -> bytes:
        return time.perf_counter_ns().to_bytes(_STAMP, "little") + self._body


class _Tally:
    """Shared counters of one run (written by one consumer, read by the UI)."""

    def __init__(self, size: int) -> None:
        self.size = max(size, _STAMP)
        self.received = 0
        self.last_arrival = 0
        self.latencies: list[int] = []
        self.errors: list[str] = []
        self.duplicates = 0
        self._seen: set[str | None] = set()

    def is_duplicate(self, event_id: str | None) -> bool:
        """Whether an object with this event id was received before (and count it).

        At-least-once brokers deliver again after a rebalance or reconnect;
        like a user would, the bench drops those by event id.
        """
        if event_id is None or event_id not in self._seen:
            self._seen.add(event_id)
            return False
        self.duplicates += 1
        return True

    def record(self, data: Any) -> None:
        arrival = time.perf_counter_ns()
        if type(data) is not bytes:
            data = extract(data)  # a proxy: fetch from the store now
        if len(data) != self.size:
            raise AssertionError(f"expected {self.size} bytes, got {len(data)}")
        self.latencies.append(arrival - int.from_bytes(data[:_STAMP], "little"))
        self.received += 1
        self.last_arrival = arrival


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index] / 1000.0


def _measurement(
    path: str,
    label: str,
    size: int,
    tallies: list[_Tally],
    start: int,
    cpu_seconds: float,
) -> Measurement:
    result = Measurement(path, label, size, cpu_seconds=cpu_seconds)
    errors = [error for tally in tallies for error in tally.errors]
    if errors:
        result.error = errors[0]
    result.count = sum(tally.received for tally in tallies)
    result.duplicates = sum(tally.duplicates for tally in tallies)
    last = max((tally.last_arrival for tally in tallies), default=0)
    result.seconds = max(0.0, (last - start) / 1e9)
    latencies = sorted(x for tally in tallies for x in tally.latencies)
    if latencies:
        result.p50_us = statistics.median(latencies) / 1000.0
        result.p99_us = _percentile(latencies, 0.99)
    return result


def _guard(tally: _Tally, work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported in the result, not raised
            tally.errors.append(f"{type(exc).__name__}: {exc}")

    return run


class _Runner:
    """Drives threads (or an event loop) and the progress display."""

    def __init__(self, progress: Progress, seconds_limit: float) -> None:
        self.progress = progress
        self.seconds_limit = seconds_limit

    def deadline(self) -> float:
        return time.perf_counter() + self.seconds_limit

    def wait(
        self,
        threads: list[threading.Thread],
        tallies: list[_Tally],
        task: Any,
    ) -> bool:
        """Poll until the threads end; False if they stalled."""
        give_up = time.perf_counter() + self.seconds_limit + GRACE_SECONDS
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and time.perf_counter() < give_up:
            self.progress.update(task, completed=sum(t.received for t in tallies))
            threads[-1].join(0.1)
        self.progress.update(task, completed=sum(t.received for t in tallies))
        stalled = any(t.is_alive() for t in threads)
        if stalled:
            tallies[0].errors.append(
                f"stalled: no end of stream within {self.seconds_limit + GRACE_SECONDS:.0f} s",
            )
        return not stalled


# --- the three paths ---------------------------------------------------------


def _open_store(kind: str, directory: Path) -> Store[Any] | None:
    if kind == "none":
        return None
    name = f"bench-{uuid.uuid4().hex[:8]}"
    if kind == "file":
        from proxystore_stream.store.connectors.file import FileConnector

        return Store(name, FileConnector(directory / "store"))
    if kind == "memory":
        from proxystore_stream.store.connectors.memory import MemoryConnector

        return Store(name, MemoryConnector())
    from proxystore_stream.store.registry import connector_class

    # Raises MissingDependencyError naming the [redis] extra if needed.
    cls = connector_class("redis")
    url = urlsplit(os.environ.get("PSS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    db = int(url.path.lstrip("/") or 0)
    return Store(
        name,
        cls.from_config(
            {"hostname": url.hostname or "127.0.0.1", "port": url.port or 6379, "db": db}
        ),
    )


def _producer_loop(
    send: Callable[[bytes], None],
    payloads: _Payloads,
    count: int,
    deadline: float,
) -> None:
    clock = time.perf_counter
    for i in range(count):
        if not i & 15 and clock() > deadline:
            break
        send(payloads.make())


def _ours_sync(
    target: ModuleType,
    config: BenchConfig,
    store: Store[Any] | None,
    topic: str,
    payloads: _Payloads,
    count: int,
    runner: _Runner,
    tally: _Tally,
) -> tuple[list[threading.Thread], Callable[[], None]]:
    """Threads for one topic of our path, after a warm-up; and a closer."""
    publisher, subscriber = target.open_endpoints(config.shim, topic)
    producer: StreamProducer[bytes] = StreamProducer(
        publisher,
        default_store=store,
        batch_size=config.batch_size,
    )
    timeout = runner.seconds_limit + GRACE_SECONDS
    consumer: StreamConsumer[bytes] = StreamConsumer(subscriber, timeout=timeout)
    warm = _Tally(payloads.size)
    try:
        for _ in range(WARMUP):
            producer.send(topic, payloads.make())
        producer.flush()
        for _ in range(WARMUP):
            warm.record(consumer.next(timeout))
    except BaseException:
        subscriber.close()
        publisher.close()
        raise

    def produce() -> None:
        try:
            _producer_loop(
                lambda m: producer.send(topic, m),
                payloads,
                count,
                runner.deadline(),
            )
        finally:
            producer.close(topics=[topic], publisher=False)

    def consume() -> None:
        for _ in range(_DELIVERY_BOUND * (count + 1)):
            try:
                obj = consumer.next(timeout)
            except StopIteration:
                return
            if not tally.is_duplicate(consumer.last_event_id):
                tally.record(obj)
        raise AssertionError("more deliveries than the bound (duplicates?)")

    def close() -> None:
        consumer.close()
        publisher.close()

    threads = [
        threading.Thread(target=_guard(tally, produce), daemon=True),
        threading.Thread(target=_guard(tally, consume), daemon=True),
    ]
    return threads, close


class _AsyncTopic:
    """One topic of our path on the async twins: set up, then run, then close."""

    def __init__(
        self,
        target: ModuleType,
        config: BenchConfig,
        store: Store[Any] | None,
        topic: str,
        payloads: _Payloads,
        count: int,
        runner: _Runner,
        tally: _Tally,
    ) -> None:
        self.target = target
        self.config = config
        self.store = store
        self.topic = topic
        self.payloads = payloads
        self.count = count
        self.runner = runner
        self.tally = tally
        self.timeout = runner.seconds_limit + GRACE_SECONDS
        self.publisher: Any = None
        self.subscriber: Any = None

    async def setup(self) -> None:
        """Open the endpoints and push a warm-up through them."""
        opened = self.target.open_async_endpoints(self.config.shim, self.topic)
        if inspect.isawaitable(opened):
            opened = await opened
        self.publisher, self.subscriber = opened
        self.producer: AsyncStreamProducer[bytes] = AsyncStreamProducer(
            self.publisher,
            default_store=self.store,
            batch_size=self.config.batch_size,
        )
        self.consumer: AsyncStreamConsumer[bytes] = AsyncStreamConsumer(
            self.subscriber,
            timeout=self.timeout,
        )
        warm = _Tally(self.payloads.size)
        for _ in range(WARMUP):
            await self.producer.send(self.topic, self.payloads.make())
        await self.producer.flush()
        for _ in range(WARMUP):
            await self._record(warm)

    async def _record(self, tally: _Tally) -> None:
        data = await self.consumer.next(self.timeout)
        if tally.is_duplicate(self.consumer.last_event_id):
            return
        if type(data) is not bytes:
            # Resolving reads the store: keep it off the event loop.
            data = await asyncio.to_thread(extract, data)  # type: ignore[arg-type]
        tally.record(data)

    async def produce(self) -> None:
        """Send `count` payloads (or until the time limit), then end the topic."""
        deadline = self.runner.deadline()
        try:
            for i in range(self.count):
                if not i & 15 and time.perf_counter() > deadline:
                    break
                await self.producer.send(self.topic, self.payloads.make())
        finally:
            await self.producer.close(topics=[self.topic], publisher=False)

    async def consume(self) -> None:
        """Receive until the end of the topic."""
        for _ in range(_DELIVERY_BOUND * (self.count + 1)):
            try:
                await self._record(self.tally)
            except StopAsyncIteration:
                return
        raise AssertionError("more deliveries than the bound (duplicates?)")

    async def close(self) -> None:
        """Close whatever `setup` opened."""
        if self.subscriber is not None:
            await self.subscriber.close()
        if self.publisher is not None:
            await self.publisher.close()


async def _guarded(tally: _Tally, work: Any) -> None:
    try:
        await work
    except Exception as exc:  # reported in the result, not raised
        tally.errors.append(f"{type(exc).__name__}: {exc}")


def _run_ours(
    target: ModuleType,
    config: BenchConfig,
    store: Store[Any] | None,
    size: int,
    count: int,
    runner: _Runner,
    topics: int,
    use_async: bool,
) -> Measurement:
    payloads = _Payloads(size)
    path, label = _ours_names(config, topics, use_async)
    count = max(1, count // topics)
    tallies = [_Tally(size) for _ in range(topics)]
    names = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(topics)]
    task = runner.progress.add_task(f"{format_size(size)} {label}", total=count * topics)
    try:
        if use_async:
            start, cpu = _run_ours_async(
                target, config, store, names, payloads, count, runner, tallies, task
            )
        else:
            start, cpu = _run_ours_sync(
                target, config, store, names, payloads, count, runner, tallies, task
            )
    finally:
        runner.progress.remove_task(task)
        _delete_topics(target, config.shim, names)
    return _measurement(path, label, size, tallies, start, cpu)


def _delete_topics(target: ModuleType, shim: str, topics: list[str]) -> None:
    """Remove what a run left in the broker, where the target can (`delete_topics`)."""
    delete = getattr(target, "delete_topics", None)
    if delete is None:
        return
    try:
        delete(shim, topics)
    except Exception as exc:  # the measurement stands; the leftover is reported
        logger.warning("could not delete the bench topics %s: %s", topics, exc)


def _ours_names(config: BenchConfig, topics: int, use_async: bool) -> tuple[str, str]:
    """The path and label of one of our rows."""
    path, label = "ours", "ours"
    if topics > 1:
        path, label = "ours-concurrent", f"ours x{topics} topics"
    if config.use_async:
        # Both twins are measured: name each row by its mode.
        label += " async" if use_async else " sync"
        path += "" if use_async else "-sync"
    return path, label


def _recorded(path: str, label: str, size: int, run: Callable[[], Measurement]) -> Measurement:
    """Run one path; a failure becomes that row's error instead of ending the bench."""
    try:
        return run()
    except (BenchError, ImportError):
        raise
    except Exception as exc:
        failed = Measurement(path, label, size)
        failed.error = f"{type(exc).__name__}: {exc}"
        return failed


def _run_ours_sync(
    target: ModuleType,
    config: BenchConfig,
    store: Store[Any] | None,
    names: list[str],
    payloads: _Payloads,
    count: int,
    runner: _Runner,
    tallies: list[_Tally],
    task: Any,
) -> tuple[int, float]:
    """K producer threads and K consumer threads; returns the start (ns) and CPU seconds."""
    threads: list[threading.Thread] = []
    closers: list[Callable[[], None]] = []
    stalled = False
    try:
        for name, tally in zip(names, tallies, strict=True):
            made, close = _ours_sync(target, config, store, name, payloads, count, runner, tally)
            threads += made
            closers.append(close)
        start = time.perf_counter_ns()
        cpu = time.process_time()
        stalled = not runner.wait(threads, tallies, task)
        cpu = time.process_time() - cpu
    finally:
        # Threads that stalled may still use the endpoints: leave those be.
        if not stalled:
            for close in closers:
                close()
    return start, cpu


def _run_ours_async(
    target: ModuleType,
    config: BenchConfig,
    store: Store[Any] | None,
    names: list[str],
    payloads: _Payloads,
    count: int,
    runner: _Runner,
    tallies: list[_Tally],
    task: Any,
) -> tuple[int, float]:
    """K producer tasks and K consumer tasks in one loop; returns the start (ns) and CPU s."""
    topics = [
        _AsyncTopic(target, config, store, name, payloads, count, runner, tally)
        for name, tally in zip(names, tallies, strict=True)
    ]
    start: list[int] = []
    cpu: list[float] = []

    async def main() -> None:
        try:
            await asyncio.gather(*(topic.setup() for topic in topics))
            start.append(time.perf_counter_ns())
            cpu.append(time.process_time())
            await asyncio.gather(
                *(_guarded(t.tally, t.produce()) for t in topics),
                *(_guarded(t.tally, t.consume()) for t in topics),
            )
            cpu.append(time.process_time())
        finally:
            for topic in topics:
                await topic.close()

    loop_thread = threading.Thread(
        target=_guard(tallies[0], lambda: asyncio.run(main())),
        daemon=True,
    )
    runner.wait([loop_thread], tallies, task)
    if not start:
        return time.perf_counter_ns(), 0.0
    return start[0], cpu[-1] - cpu[0] if len(cpu) == 2 else 0.0


class _PlainFiles:
    """The file store's bare path: write, hand the path over, read, unlink."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._directory.mkdir(parents=True, exist_ok=True)
        self._paths: queue_module.Queue[str] = queue_module.Queue()
        self._n = 0

    def send(self, message: bytes) -> None:
        if not message:
            self._paths.put("")
            return
        self._n += 1
        path = os.path.join(self._directory, f"{self._n:08d}")
        with open(path, "wb") as f:
            f.write(message)
        self._paths.put(path)

    def flush(self) -> None:
        """Nothing is buffered."""

    def receive(self) -> bytes:
        path = self._paths.get()
        if not path:
            return _END
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        return data

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def _run_bare(
    client: Any,
    path: str,
    label: str,
    size: int,
    count: int,
    runner: _Runner,
) -> Measurement:
    payloads = _Payloads(size)
    tally = _Tally(size)
    task = runner.progress.add_task(f"{format_size(size)} {label}", total=count)
    try:
        warm = _Tally(size)
        warm_threads = [
            threading.Thread(
                target=_guard(warm, lambda: _send_warmup(client, payloads)),
                daemon=True,
            ),
            threading.Thread(
                target=_guard(warm, lambda: _receive_n(client, warm, WARMUP)),
                daemon=True,
            ),
        ]
        if not runner.wait(warm_threads, [warm], task) or warm.errors:
            result = Measurement(path, label, size)
            result.error = warm.errors[0] if warm.errors else "warm-up stalled"
            return result

        def produce() -> None:
            try:
                _producer_loop(client.send, payloads, count, runner.deadline())
            finally:
                client.send(_END)
                client.flush()

        def consume() -> None:
            for _ in range(count + 1):
                data = client.receive()
                if not data:
                    return
                tally.record(data)
            raise AssertionError("more messages than were sent")

        threads = [
            threading.Thread(target=_guard(tally, produce), daemon=True),
            threading.Thread(target=_guard(tally, consume), daemon=True),
        ]
        start = time.perf_counter_ns()
        cpu = time.process_time()
        finished = runner.wait(threads, [tally], task)
        cpu = time.process_time() - cpu
    finally:
        runner.progress.remove_task(task)
    if finished:
        client.close()
    return _measurement(path, label, size, [tally], start, cpu)


def _send_warmup(client: Any, payloads: _Payloads) -> None:
    for _ in range(WARMUP):
        client.send(payloads.make())
    client.flush()


def _receive_n(client: Any, tally: _Tally, n: int) -> None:
    for _ in range(n):
        tally.record(client.receive())


# --- orchestration -------------------------------------------------------------


def run_bench(
    config: BenchConfig,
    console: Console | None = None,
) -> list[Measurement]:
    """Measure every size on our path, the bare transport and, for files, plain files.

    Args:
        config: What to measure.
        console: Where progress goes (default: stderr-free stdout console).

    Raises:
        BenchError: If the shim, store or mode cannot be used.
        MissingDependencyError: If an extra is missing.
    """
    if config.store not in STORES:
        raise BenchError(f"unknown store {config.store!r}; choose from {', '.join(STORES)}")
    if config.batch_size < 1:
        raise BenchError("--batch-size must be at least 1")
    if config.topics < 1:
        raise BenchError("--topics must be at least 1")
    if config.repeat < 1:
        raise BenchError("--repeat must be at least 1")
    target = load_target(config.shim)
    if config.use_async and not hasattr(target, "open_async_endpoints"):
        raise BenchError(
            f"shim {config.shim!r} has no async bench endpoints "
            f"({target.__name__} lacks open_async_endpoints); run without --async",
        )
    console = console or Console()
    base = Path(tempfile.mkdtemp(prefix="pss-bench-", dir=config.directory))
    results: list[Measurement] = []
    try:
        store = _open_store(config.store, base)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            refresh_per_second=4,
        )
        runner = _Runner(progress, config.seconds_limit)
        with progress:
            for size in config.sizes:
                count = config.count or auto_count(size, config.seconds_limit)
                rounds: dict[str, list[Measurement]] = {}
                # Alternate the paths round by round, so a noisy neighbour
                # hurts both alike; the best round of each path is reported.
                for index in range(config.repeat):
                    runs = _round(target, config, store, size, count, runner, base, index)
                    for run in runs:
                        rounds.setdefault(run.path, []).append(run)
                results.extend(_best(rounds[path]) for path in _ordered(rounds))
        if store is not None:
            store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def _round(
    target: ModuleType,
    config: BenchConfig,
    store: Store[Any] | None,
    size: int,
    count: int,
    runner: _Runner,
    base: Path,
    index: int,
) -> list[Measurement]:
    """Measure every path of one size once (round `index`)."""
    modes = [True, False] if config.use_async else [False]
    if index % 2:
        modes.reverse()  # The two twins swap places every round.

    def ours(topics: int, mode: bool) -> Measurement:
        path, label = _ours_names(config, topics, mode)
        run = partial(_run_ours, target, config, store, size, count, runner, topics, mode)
        return _recorded(path, label, size, run)

    runs = [ours(1, mode) for mode in modes]
    runs.append(_bare_round(target, config, size, count, runner))
    if config.store == "file":
        files = _PlainFiles(base / f"plain-{size}")
        runs.append(_run_bare(files, "file", "plain files", size, count, runner))
    if config.topics > 1:
        runs += [ours(config.topics, mode) for mode in modes]
    return runs


def _bare_round(
    target: ModuleType,
    config: BenchConfig,
    size: int,
    count: int,
    runner: _Runner,
) -> Measurement:
    labels = getattr(target, "BARE_LABELS", {})
    label = labels.get(config.shim, f"bare {config.shim} client")

    def run() -> Measurement:
        topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
        client = target.open_bare(config.shim, topic)
        try:
            return _run_bare(client, "bare", label, size, count, runner)
        finally:
            _delete_topics(target, config.shim, [topic])

    return _recorded("bare", label, size, run)


_ORDER = ("ours", "ours-sync", "bare", "file", "ours-concurrent", "ours-concurrent-sync")


def _ordered(rounds: dict[str, list[Measurement]]) -> list[str]:
    """Paths in table order (async before its sync twin, whichever ran first)."""
    return sorted(rounds, key=lambda path: _ORDER.index(path) if path in _ORDER else len(_ORDER))


def _best(runs: list[Measurement]) -> Measurement:
    """The fastest round, or the first failed one (a failure is never hidden)."""
    failed = [run for run in runs if run.error]
    best = failed[0] if failed else min(runs, key=lambda run: run.per_message)
    best.round_per_message = [math.inf if run.error else run.per_message for run in runs]
    return best


@dataclass
class Ratios:
    """How one result compares with the other paths of its size.

    Attributes:
        vs_bare: Our time per message over bare's (lower is better).
        vs_file: Our time per message over plain files' (``--store file``).
        async_over_sync: Async msg/s over the sync twin's msg/s, measured
            in the same run (``--async``; above 1: async is faster).
        vs_bare_rounds: `vs_bare` of each round on its own (our round k
            over bare's round k), rounds where either failed left out: how
            far the ratio moves within one run.
        async_over_sync_rounds: `async_over_sync` of each round on its own.
    """

    vs_bare: float | None = None
    vs_file: float | None = None
    async_over_sync: float | None = None
    vs_bare_rounds: list[float] = field(default_factory=list)
    async_over_sync_rounds: list[float] = field(default_factory=list)


def _paired(numerator: Measurement, denominator: Measurement) -> list[float]:
    """Round k of `numerator` over round k of `denominator` (time per message)."""
    return [
        ours / theirs
        for ours, theirs in zip(
            numerator.round_per_message, denominator.round_per_message, strict=False
        )
        if math.isfinite(ours) and math.isfinite(theirs) and theirs > 0
    ]


def _usable(result: Measurement | None) -> bool:
    return result is not None and not result.error and result.count > 0


def ratios(results: list[Measurement]) -> Iterator[tuple[Measurement, Ratios]]:
    """Yield each result with its ratios (our paths only; others get none)."""
    by_size: dict[tuple[int, str], Measurement] = {(r.size, r.path): r for r in results}
    for result in results:
        found = Ratios()
        if result.path.startswith("ours") and _usable(result):
            bare = by_size.get((result.size, "bare"))
            files = by_size.get((result.size, "file"))
            twin = by_size.get((result.size, f"{result.path}-sync"))
            if bare is not None and _usable(bare):
                found.vs_bare = result.per_message / bare.per_message
                found.vs_bare_rounds = _paired(result, bare)
            if files is not None and _usable(files):
                found.vs_file = result.per_message / files.per_message
            if twin is not None and _usable(twin):
                found.async_over_sync = result.messages_per_second / twin.messages_per_second
                # msg/s over msg/s is the twin's time per message over ours.
                found.async_over_sync_rounds = _paired(twin, result)
        yield result, found


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _fmt_us(micros: float) -> str:
    if micros >= 10_000:
        return f"{micros / 1000:,.0f} ms"
    if micros >= 1000:
        return f"{micros / 1000:,.1f} ms"
    return f"{micros:,.0f} µs"


def results_table(config: BenchConfig, results: list[Measurement]) -> Table:
    """Return the final table: one row per path and size."""
    mode = "async and sync" if config.use_async else "sync"
    caption = (
        "latency p50/p99: send to arrival (queueing included); CPU/msg: CPU time "
        "of the whole process per message; vs bare/file: "
        "our time per message / theirs (lower is better, < 1 is faster)"
    )
    if config.use_async:
        caption += (
            "; async/sync: async msg/s / the sync twin's, same run "
            "(higher is better, > 1 is async faster)"
        )
    table = Table(
        title=(
            f"bench --shim {config.shim} --store {config.store} "
            f"--batch-size {config.batch_size} ({mode})"
        ),
        caption=caption,
    )
    table.add_column("size", justify="right")
    table.add_column("path")
    table.add_column("msgs", justify="right")
    table.add_column("msg/s", justify="right")
    table.add_column("MB/s", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("CPU/msg", justify="right")
    table.add_column("vs bare", justify="right")
    if config.store == "file":
        table.add_column("vs file", justify="right")
    per_round = config.repeat > 1
    if per_round:
        table.add_column("vs bare, rounds", justify="right")
    if config.use_async:
        table.add_column("async/sync", justify="right")
        if per_round:
            table.add_column("async/sync, rounds", justify="right")
    previous = None
    for result, found in ratios(results):
        size = format_size(result.size) if result.size != previous else ""
        previous = result.size
        if result.error:
            cells = [size, result.label, "", "", "", "", "", "", f"[red]{result.error}[/red]"]
            table.add_row(*cells)  # rich leaves the remaining cells empty
            continue
        cells = [
            size,
            result.label,
            _fmt(result.count) + (f" +{result.duplicates} dup" if result.duplicates else ""),
            _fmt(result.messages_per_second),
            _fmt(result.mb_per_second, 1),
            _fmt_us(result.p50_us),
            _fmt_us(result.p99_us),
            _fmt_us(result.cpu_us_per_message),
            _ratio(found.vs_bare),
        ]
        if config.store == "file":
            cells.append(_ratio(found.vs_file))
        if per_round:
            cells.append(_spread(found.vs_bare_rounds))
        if config.use_async:
            cells.append(_ratio(found.async_over_sync))
            if per_round:
                cells.append(_spread(found.async_over_sync_rounds))
        table.add_row(*cells)
    return table


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _spread(values: list[float]) -> str:
    """``median (lowest-highest)`` of per-round ratios; empty for fewer than two."""
    if len(values) < 2:
        return ""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def write_json(path: str, config: BenchConfig, results: list[Measurement]) -> None:
    """Write the config, the results and their ratios to `path` as JSON."""
    rows = []
    for result, found in ratios(results):
        row = result.as_dict()
        row["ratio_vs_bare"] = found.vs_bare
        row["ratio_vs_file"] = found.vs_file
        row["ratio_async_over_sync"] = found.async_over_sync
        row["ratio_vs_bare_rounds"] = found.vs_bare_rounds
        row["ratio_async_over_sync_rounds"] = found.async_over_sync_rounds
        rows.append(row)
    document = {"config": asdict(config), "results": rows}
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
