"""``proxystore-stream demo``: three processes, one broker, one store, no setup.

::

    producer process --(events: keys only, multiprocessing.Queue shim)--> consumer process
         |                                                                     |
         +--(objects)--> Store("demo", FileConnector(tmpdir))       (proxies, pickled unresolved)
                                   |                                           v
                                   +----------------(resolve)-----------> worker process

The producer sends array-like objects (NumPy arrays when NumPy is
installed, else bytearrays) with a CRC-32 in their metadata. The consumer
gets lazy proxies and forwards them, unresolved, to the worker over a second
queue; the worker resolves each proxy (reading the file store, which evicts
the object) and verifies the checksum. The table at the end shows how few
bytes went through the broker compared with the store.

Processes use the "spawn" start method, as on macOS and Windows.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import queue as queue_module
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn
from rich.progress import DownloadColumn
from rich.progress import Progress
from rich.progress import TextColumn
from rich.progress import TimeElapsedColumn
from rich.progress import TransferSpeedColumn
from rich.table import Table

__all__ = ["DemoConfig", "DemoError", "run_demo"]

TOPIC = "demo"
MB = 1_000_000
# Seconds any one stage may wait for its input before the demo gives up.
STAGE_TIMEOUT = 60.0
# How far (in objects) the producer may run ahead of the consumer and worker.
QUEUE_DEPTH = 8
_STAGES = ("producer", "consumer", "worker")
_KEY_FILE = re.compile(r"[0-9a-f]{32}")


class DemoError(Exception):
    """The demo cannot run with these settings (exit code 2)."""


@dataclass
class DemoConfig:
    """Settings of the demo.

    Attributes:
        size_mb: Total megabytes (10^6 bytes) to stream.
        object_mb: Megabytes per object.
        shim: Broker shim; only ``queue`` crosses processes.
        directory: Parent of the file store's directory (None: a temp dir).
    """

    size_mb: float = 300.0
    object_mb: float = 10.0
    shim: str = "queue"
    directory: str | None = None

    def check(self) -> None:
        """Raise DemoError if the demo cannot run with these settings."""
        if self.shim == "local":
            raise DemoError(
                "the local shim works within one process only, and the demo runs "
                "producer, consumer and worker as separate processes; use "
                "--shim queue (or `bench --shim local` for the local shim)",
            )
        if self.shim != "queue":
            raise DemoError(
                f"the demo runs on the embedded default, --shim queue; got "
                f"{self.shim!r} (for brokers, use `bench --shim {self.shim}`)",
            )
        if not self.size_mb > 0 or not self.object_mb > 0:
            raise DemoError("--size-mb and --object-mb must be positive")
        if self.object_bytes > self.total_bytes:
            raise DemoError("--object-mb must not exceed --size-mb")

    @property
    def total_bytes(self) -> int:
        """Bytes to stream in all."""
        return int(self.size_mb * MB)

    @property
    def object_bytes(self) -> int:
        """Bytes per object (a multiple of 8)."""
        return max(8, int(self.object_mb * MB) // 8 * 8)

    @property
    def objects(self) -> int:
        """Number of objects to stream."""
        return max(1, math.ceil(self.total_bytes / self.object_bytes))


# --- what runs in the child processes -------------------------------------------


def _make_object(index: int, nbytes: int, base: Any) -> Any:
    """A distinct array-like object of `nbytes` bytes (cheap to make)."""
    if base is not None:
        import numpy as np

        return base ^ np.uint64(index * 0x9E3779B97F4A7C15 % 2**64)
    data = bytearray(base_bytes(nbytes))
    data[:8] = index.to_bytes(8, "little")
    return data


def base_bytes(nbytes: int) -> bytes:
    """Pseudo-random filler of `nbytes` bytes for the bytearray fallback."""
    block = os.urandom(4096)
    return (block * (nbytes // 4096 + 1))[:nbytes]


def _checksum(obj: Any) -> int:
    return zlib.crc32(memoryview(obj).cast("B"))


def _numpy_base(nbytes: int) -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.arange(nbytes // 8, dtype=np.uint64)


def _producer_main(
    events: Any,
    status: Any,
    directory: str,
    objects: int,
    nbytes: int,
) -> None:
    """Send `objects` arrays of `nbytes` through the queue shim and a file store."""
    try:
        from proxystore_stream.producer import StreamProducer
        from proxystore_stream.shims.queue import QueuePublisher
        from proxystore_stream.store.base import Store
        from proxystore_stream.store.connectors.file import FileConnector

        class CountingPublisher(QueuePublisher):
            def __init__(self, queues: Mapping[str, Any]) -> None:
                super().__init__(queues)
                self.messages = 0
                self.bytes = 0

            def send(self, topic: str, message: bytes) -> None:
                self.messages += 1
                self.bytes += len(message)
                super().send(topic, message)

        class CountingFileConnector(FileConnector):
            def __init__(self, directory: str) -> None:
                super().__init__(directory)
                self.bytes = 0

            def put(self, frames: Any) -> str:
                self.bytes += sum(memoryview(frame).nbytes for frame in frames)
                return super().put(frames)

        base = _numpy_base(nbytes)
        connector = CountingFileConnector(directory)
        publisher = CountingPublisher({TOPIC: events})
        producer: StreamProducer[Any] = StreamProducer(
            publisher,
            default_store=Store("demo", connector),
        )
        kind = "numpy.ndarray" if base is not None else "bytearray"
        status.put(("started", "producer", None))
        start = time.perf_counter()
        for index in range(objects):
            obj = _make_object(index, nbytes, base)
            metadata = {"index": index, "nbytes": nbytes, "crc32": _checksum(obj)}
            producer.send(TOPIC, obj, metadata=metadata)
            status.put(("progress", "producer", (index + 1, (index + 1) * nbytes)))
        producer.close(topics=[TOPIC])
        status.put(
            (
                "done",
                "producer",
                {
                    "objects": objects,
                    "payload_bytes": objects * nbytes,
                    "broker_messages": publisher.messages,
                    "broker_bytes": publisher.bytes,
                    "store_bytes": connector.bytes,
                    "seconds": time.perf_counter() - start,
                    "kind": kind,
                },
            ),
        )
    except BaseException as exc:
        status.put(("error", "producer", f"{type(exc).__name__}: {exc}"))


def _consumer_main(events: Any, work: Any, status: Any) -> None:
    """Receive proxies and forward them, unresolved, to the worker."""
    try:
        from proxystore_stream.consumer import StreamConsumer
        from proxystore_stream.proxy import Proxy
        from proxystore_stream.proxy import is_resolved
        from proxystore_stream.shims.queue import QueueSubscriber

        class CountingSubscriber(QueueSubscriber):
            def __init__(self, queue: Any) -> None:
                super().__init__(queue)
                self.messages = 0
                self.bytes = 0

            def receive(self, timeout: float | None = None) -> bytes:
                message = super().receive(timeout)
                self.messages += 1
                self.bytes += len(message)
                return message

        subscriber = CountingSubscriber(events)
        consumer: StreamConsumer[Any] = StreamConsumer(subscriber, timeout=STAGE_TIMEOUT)
        forwarded = forwarded_bytes = resolved_here = not_proxies = 0
        start = time.perf_counter()
        payload = 0
        for metadata, proxy in consumer.iter_with_metadata():
            # type(), not isinstance(): isinstance would resolve the proxy.
            if type(proxy) is not Proxy:
                not_proxies += 1
            data = pickle.dumps((metadata, proxy), protocol=pickle.HIGHEST_PROTOCOL)
            if type(proxy) is Proxy and is_resolved(proxy):
                resolved_here += 1
            work.put(data, timeout=STAGE_TIMEOUT)
            forwarded += 1
            forwarded_bytes += len(data)
            payload += int(metadata.get("nbytes", 0))
            status.put(("progress", "consumer", (forwarded, payload)))
        work.put(None, timeout=STAGE_TIMEOUT)
        consumer.close()
        status.put(
            (
                "done",
                "consumer",
                {
                    "objects": forwarded,
                    "broker_messages": subscriber.messages,
                    "broker_bytes": subscriber.bytes,
                    "forwarded_bytes": forwarded_bytes,
                    "resolved_here": resolved_here,
                    "not_proxies": not_proxies,
                    "payload_bytes": payload,
                    "seconds": time.perf_counter() - start,
                },
            ),
        )
    except BaseException as exc:
        status.put(("error", "consumer", f"{type(exc).__name__}: {exc}"))


def _worker_main(work: Any, status: Any, limit: int) -> None:
    """Resolve forwarded proxies and verify each object's checksum."""
    try:
        from proxystore_stream.proxy import extract
        from proxystore_stream.proxy import is_resolved

        resolved = resolved_bytes = verified = arrived_resolved = 0
        failures: list[str] = []
        start: float | None = None
        for expected_index in range(limit + 1):
            item = work.get(timeout=STAGE_TIMEOUT)
            if item is None:
                break
            if start is None:
                start = time.perf_counter()
            metadata, proxy = pickle.loads(item)
            if is_resolved(proxy):
                arrived_resolved += 1
            obj = extract(proxy)
            resolved += 1
            nbytes = memoryview(obj).nbytes
            resolved_bytes += nbytes
            index = metadata.get("index")
            if index != expected_index:
                failures.append(f"object {index} arrived, expected {expected_index}")
            if nbytes != metadata.get("nbytes"):
                failures.append(
                    f"object {index}: {nbytes} bytes, expected {metadata.get('nbytes')}"
                )
            elif _checksum(obj) != metadata.get("crc32"):
                failures.append(f"object {index}: checksum mismatch")
            else:
                verified += 1
            del obj, proxy
            status.put(("progress", "worker", (resolved, resolved_bytes)))
        else:
            failures.append(f"more than {limit} objects arrived")
        status.put(
            (
                "done",
                "worker",
                {
                    "objects": resolved,
                    "resolved_bytes": resolved_bytes,
                    "verified": verified,
                    "arrived_resolved": arrived_resolved,
                    "failures": failures[:5],
                    "seconds": time.perf_counter() - start if start is not None else 0.0,
                },
            ),
        )
    except BaseException as exc:
        status.put(("error", "worker", f"{type(exc).__name__}: {exc}"))


# --- the parent: progress, checks and the table ----------------------------------


@dataclass
class _Outcome:
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    """First object sent to last object verified."""
    startup: float = 0.0
    """Process start until the producer began sending."""


def _watch(
    processes: dict[str, Any],
    status: Any,
    config: DemoConfig,
    console: Console,
) -> _Outcome:
    outcome = _Outcome()
    total = config.objects * config.object_bytes
    progress = Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    descriptions = {
        "producer": "producer -> store, broker",
        "consumer": "consumer -> proxies",
        "worker": "worker <- resolve, verify",
    }
    start = sending = time.perf_counter()
    give_up = start + STAGE_TIMEOUT * 3
    with progress:
        tasks = {name: progress.add_task(descriptions[name], total=total) for name in _STAGES}
        while len(outcome.done) + len(outcome.errors) < len(_STAGES):
            if time.perf_counter() > give_up:
                outcome.errors.setdefault("demo", "gave up waiting for the processes")
                break
            try:
                kind, stage, value = status.get(timeout=0.2)
            except queue_module.Empty:
                for name, process in processes.items():
                    finished = name in outcome.done or name in outcome.errors
                    if not finished and process.exitcode is not None:
                        outcome.errors[name] = f"exited with code {process.exitcode}"
                continue
            if kind == "started":
                sending = time.perf_counter()
                outcome.startup = sending - start
            elif kind == "progress":
                progress.update(tasks[stage], completed=value[1])
            elif kind == "done":
                outcome.done[stage] = value
                progress.update(tasks[stage], completed=total)
            else:
                outcome.errors[stage] = value
    outcome.seconds = time.perf_counter() - sending
    return outcome


def _mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MB / seconds:,.0f}" if seconds > 0 else "-"


def _bytes(n: int) -> str:
    if n >= MB:
        return f"{n / MB:,.1f} MB"
    if n >= 1000:
        return f"{n / 1000:,.1f} kB"
    return f"{n} B"


def _checks(outcome: _Outcome, config: DemoConfig, leftover: int) -> list[tuple[str, bool]]:
    producer = outcome.done.get("producer", {})
    consumer = outcome.done.get("consumer", {})
    worker = outcome.done.get("worker", {})
    n = config.objects
    return [
        (f"all {n} objects verified by the worker (CRC-32)", worker.get("verified") == n),
        (
            "every stage saw every object",
            producer.get("objects") == consumer.get("objects") == worker.get("objects") == n,
        ),
        (
            "consumer forwarded proxies without resolving them",
            consumer.get("resolved_here") == 0
            and consumer.get("not_proxies") == 0
            and worker.get("arrived_resolved") == 0,
        ),
        (
            "broker bytes sent == received",
            "broker_bytes" in producer
            and producer.get("broker_bytes") == consumer.get("broker_bytes"),
        ),
        (
            "broker carried < 1% of the bytes the store did",
            producer.get("broker_bytes", 1) * 100 < producer.get("store_bytes", 0),
        ),
        ("store empty afterwards (each object evicted once resolved)", leftover == 0),
    ]


def _table(outcome: _Outcome, config: DemoConfig) -> Table:
    producer = outcome.done.get("producer", {})
    consumer = outcome.done.get("consumer", {})
    worker = outcome.done.get("worker", {})
    table = Table(title=f"What moved where ({producer.get('kind', 'objects')}, spawn)")
    for name, justify in (
        ("stage", "left"),
        ("path", "left"),
        ("items", "right"),
        ("bytes", "right"),
        ("MB/s", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_row(
        "producer",
        "events -> broker (multiprocessing.Queue shim)",
        str(producer.get("broker_messages", "-")),
        _bytes(producer.get("broker_bytes", 0)),
        "",
    )
    table.add_row(
        "producer",
        "objects -> store (FileConnector)",
        str(producer.get("objects", "-")),
        _bytes(producer.get("store_bytes", 0)),
        _mbps(producer.get("payload_bytes", 0), producer.get("seconds", 0.0)),
    )
    table.add_row(
        "consumer",
        "broker -> proxies, forwarded pickled (unresolved)",
        str(consumer.get("objects", "-")),
        _bytes(consumer.get("forwarded_bytes", 0)),
        _mbps(consumer.get("payload_bytes", 0), consumer.get("seconds", 0.0)),
    )
    table.add_row(
        "worker",
        "store -> resolved objects, verified",
        f"{worker.get('verified', 0)}/{config.objects}",
        _bytes(worker.get("resolved_bytes", 0)),
        _mbps(worker.get("resolved_bytes", 0), worker.get("seconds", 0.0)),
    )
    table.add_row(
        "end to end",
        "producer -> worker",
        str(worker.get("objects", "-")),
        _bytes(worker.get("resolved_bytes", 0)),
        _mbps(worker.get("resolved_bytes", 0), outcome.seconds),
        style="bold",
    )
    return table


def _leftover(directory: Path) -> int:
    return sum(1 for path in directory.iterdir() if _KEY_FILE.fullmatch(path.name))


def run_demo(config: DemoConfig, console: Console | None = None) -> bool:
    """Run the demo; print progress and the table. Return whether every check passed.

    Raises:
        DemoError: If the settings cannot work (unknown or in-process shim).
    """
    config.check()
    console = console or Console()
    parent = Path(tempfile.mkdtemp(prefix="pss-demo-", dir=config.directory))
    store_dir = parent / "store"
    store_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    events: Any = ctx.Queue(maxsize=QUEUE_DEPTH)
    work: Any = ctx.Queue(maxsize=QUEUE_DEPTH)
    status: Any = ctx.Queue()
    console.print(
        f"Streaming {config.objects} objects x {_bytes(config.object_bytes)} "
        f"= {_bytes(config.objects * config.object_bytes)}: producer -> "
        f"multiprocessing.Queue shim + file store ({store_dir}) -> consumer -> worker",
        highlight=False,
    )
    processes = {
        "producer": ctx.Process(
            target=_producer_main,
            args=(events, status, str(store_dir), config.objects, config.object_bytes),
            name="pss-demo-producer",
        ),
        "consumer": ctx.Process(
            target=_consumer_main,
            args=(events, work, status),
            name="pss-demo-consumer",
        ),
        "worker": ctx.Process(
            target=_worker_main,
            args=(work, status, config.objects),
            name="pss-demo-worker",
        ),
    }
    try:
        for process in processes.values():
            process.start()
        outcome = _watch(processes, status, config, console)
    finally:
        for process in processes.values():
            process.join(5)
        for process in processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5)
        leftover = _leftover(store_dir) if store_dir.is_dir() else 0
        shutil.rmtree(parent, ignore_errors=True)
    console.print(_table(outcome, config))
    checks = _checks(outcome, config, leftover)
    for stage, error in outcome.errors.items():
        checks.append((f"{stage}: {error}", False))
    for failure in outcome.done.get("worker", {}).get("failures", []):
        checks.append((f"worker: {failure}", False))
    for text, ok in checks:
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        console.print(f"{mark} {text}", highlight=False)
    ok = all(passed for _, passed in checks)
    worker = outcome.done.get("worker", {})
    if ok:
        console.print(
            f"[bold green]verified {worker.get('verified')} objects, "
            f"{_bytes(worker.get('resolved_bytes', 0))} in {outcome.seconds:.1f} s "
            f"(+ {outcome.startup:.1f} s starting processes)[/bold green]",
            highlight=False,
        )
    else:
        console.print("[bold red]demo failed[/bold red]")
    return ok
