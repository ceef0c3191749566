"""`proxystore-stream soak`: short runs that count every message (the long soak is manual)."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from proxystore_stream.cli import main
from proxystore_stream.cli.soak import SoakConfig
from proxystore_stream.cli.soak import SoakReport
from proxystore_stream.cli.soak import _count
from proxystore_stream.cli.soak import run_soak
from proxystore_stream.cli.soak_roles import Spec as _Spec
from proxystore_stream.cli.soak_roles import count_every
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber
from tests.conftest import require_broker
from tests.kafka_broker import bootstrap as kafka_bootstrap

MIB = 1024


def assert_nothing_lost(report: SoakReport, *, deliveries_per_message: int = 1) -> None:
    assert report.sent > 0
    assert report.expected == report.sent * deliveries_per_message
    assert report.received == report.expected
    assert report.unique == report.expected
    assert (report.lost, report.duplicated, report.corrupt) == (0, 0, 0)
    assert report.errors == []
    assert report.failures() == []


def test_queue_with_file_store_counts_every_message(tmp_path: Path) -> None:
    config = SoakConfig(
        shim="queue",
        seconds=3,
        producers=2,
        consumers=2,
        size=4096,
        store="file",
        drain_seconds=20,
        directory=str(tmp_path),
    )
    report = run_soak(config)
    assert_nothing_lost(report)
    assert report.store_leftover == 0, "every stored object was evicted by its consumer"
    labels = sorted(p.label for p in report.processes)
    assert labels == ["consumer 0", "consumer 1", "producer 0", "producer 1"]
    for process in report.processes:
        assert process.start_kb > 0
        assert process.peak_growth_kb >= process.end_growth_kb
        # In flight at most 10,000 x 4 KiB: far below this unless something leaks.
        assert process.peak_growth_kb < 200 * MIB
    assert list(tmp_path.iterdir()) == [], "the run's temporary directory is removed"


def test_local_threads_fan_out_with_memory_store() -> None:
    config = SoakConfig(shim="local", seconds=2, producers=2, consumers=3, size=64, store="memory")
    report = run_soak(config)
    assert_nothing_lost(report, deliveries_per_message=3)
    assert [p.label for p in report.processes] == ["threads"]


def test_redis_queue_through_the_command_line(tmp_path: Path) -> None:
    require_broker("Redis", "127.0.0.1", 6379)
    out = tmp_path / "soak.json"
    code = main(
        [
            "soak",
            "--shim",
            "redis-queue",
            "--seconds",
            "3",
            "--size",
            "100",
            "--max-in-flight",
            "1000",
            "--json",
            str(out),
        ],
    )
    data = json.loads(out.read_text())
    assert code == 0, data["failures"]
    assert data["ok"] is True
    assert data["sent"] > 0
    assert data["received"] == data["unique"] == data["expected"] == data["sent"]
    assert (data["lost"], data["duplicated"], data["corrupt"]) == (0, 0, 0)
    assert data["messages_per_second"] > 0
    assert len(data["processes"]) == 4


def test_async_queue_processes_with_file_store_count_every_message(tmp_path: Path) -> None:
    config = SoakConfig(
        shim="queue",
        seconds=2,
        size=4096,
        store="file",
        drain_seconds=20,
        directory=str(tmp_path),
        use_async=True,
    )
    report = run_soak(config)
    assert_nothing_lost(report)
    assert report.store_leftover == 0, "every stored object was evicted by its consumer"
    labels = sorted(p.label for p in report.processes)
    assert labels == ["consumer 0", "consumer 1", "producer 0", "producer 1"]


def test_async_local_tasks_of_one_loop_fan_out_with_memory_store() -> None:
    # 2 producers and 5 consumers: more roles than asyncio's default thread
    # pool has workers, so no role may wait for the start in a worker thread.
    config = SoakConfig(
        shim="local",
        seconds=2,
        producers=2,
        consumers=5,
        size=64,
        store="memory",
        use_async=True,
    )
    report = run_soak(config)
    assert_nothing_lost(report, deliveries_per_message=5)
    assert [p.label for p in report.processes] == ["threads"]


@pytest.mark.parametrize(
    ("shim", "port"),
    [("redis-queue", 6379), ("redis-stream", 6379), ("rabbitmq-queue", 5672)],
)
def test_async_broker_shims_through_the_command_line(tmp_path: Path, shim: str, port: int) -> None:
    require_broker(shim, "127.0.0.1", port)
    out = tmp_path / "soak.json"
    code = main(
        ["soak", "--shim", shim, "--async", "--seconds", "2", "--size", "100", "--json", str(out)],
    )
    data = json.loads(out.read_text())
    assert code == 0, data["failures"]
    assert data["config"]["use_async"] is True
    assert data["sent"] > 0
    assert data["received"] == data["unique"] == data["expected"] == data["sent"]
    assert (data["lost"], data["duplicated"], data["corrupt"]) == (0, 0, 0)
    assert len(data["processes"]) == 4


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("shim", "port"), [("redis", 6379), ("rabbitmq", 5672)])
def test_fan_out_broker_shims_give_every_consumer_every_message(
    shim: str, port: int, use_async: bool
) -> None:
    require_broker(shim, "127.0.0.1", port)
    config = SoakConfig(shim=shim, seconds=2, consumers=3, size=256, use_async=use_async)
    report = run_soak(config)
    assert report.fanout is True
    assert_nothing_lost(report, deliveries_per_message=3)
    assert len(report.processes) == 5


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_zeromq_through_a_forwarder_gives_every_consumer_every_message(use_async: bool) -> None:
    # Each producer waits for every consumer's own presence topic before
    # sending; a message sent before a subscription arrived would be lost.
    config = SoakConfig(shim="zmq", seconds=2, consumers=3, size=256, use_async=use_async)
    report = run_soak(config)
    assert report.fanout is True
    assert report.transport.startswith("ZeroMQ")
    assert_nothing_lost(report, deliveries_per_message=3)
    assert len(report.processes) == 5


def test_large_pub_sub_payloads_stay_within_redis_output_buffer() -> None:
    # Redis disconnects a pub/sub subscriber 32 MiB behind. Flow control
    # counts large payloads often, bounds bytes in flight (16 MiB) and waits
    # for the slowest consumer; before, 256 KiB runs always lost a subscriber.
    require_broker("redis", "127.0.0.1", 6379)
    config = SoakConfig(shim="redis", seconds=3, size=256 * MIB)
    assert config.in_flight_limit == 64
    report = run_soak(config)
    assert_nothing_lost(report, deliveries_per_message=2)


def test_flow_control_counts_large_payloads_more_often() -> None:
    assert [count_every(size) for size in (100, 16 * MIB, 64 * MIB, 1024 * MIB, 8192 * MIB)] == [
        64,
        64,
        16,
        1,
        1,
    ]
    assert SoakConfig(size=1 * MIB).in_flight_limit == 10_000
    assert SoakConfig(size=1024 * MIB, max_in_flight=8).in_flight_limit == 8


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_kafka_gives_every_consumer_group_every_message(
    use_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PSS_KAFKA_BOOTSTRAP", kafka_bootstrap())
    config = SoakConfig(shim="kafka", seconds=2, size=256, use_async=use_async)
    report = run_soak(config)
    assert report.fanout is True
    assert_nothing_lost(report, deliveries_per_message=2)


def _spec(*, fanout: bool, producers: int = 2, consumers: int = 2) -> _Spec:
    return _Spec(
        shim="local" if fanout else "queue",
        topic="t",
        size=64,
        store="none",
        store_dir="",
        batch_size=1,
        producers=producers,
        consumers=consumers,
        max_in_flight=10,
        seconds=1,
        fanout=fanout,
        redis_url="",
        rabbitmq_url="",
    )


def _bitmap(*seqs: int) -> bytes:
    data = bytearray(4)
    for seq in seqs:
        data[seq >> 3] |= 1 << (seq & 7)
    return bytes(data)


def _report(config: SoakConfig, *, redelivers: bool = False) -> SoakReport:
    return SoakReport(config, "test", config.shim == "local", redelivers)


def test_counting_finds_loss_and_duplicates_on_a_work_queue() -> None:
    done: dict[str, dict[str, Any]] = {
        "producer 0": {"sent": 4},
        "producer 1": {"sent": 2},
        # Producer 0's message 3 never arrived; message 1 arrived twice.
        "consumer 0": {"received": 3, "corrupt": 0, "bitmaps": [_bitmap(0, 1), _bitmap(0)]},
        "consumer 1": {"received": 3, "corrupt": 0, "bitmaps": [_bitmap(1, 2), _bitmap(1)]},
    }
    report = _report(SoakConfig(shim="queue"))
    _count(report, _spec(fanout=False), done)
    assert (report.sent, report.expected, report.received) == (6, 6, 6)
    assert (report.unique, report.lost, report.duplicated) == (5, 1, 1)
    assert report.failures() == [
        "1 of 6 deliveries lost",
        "producer 0: 1 missing, seq 3..3 (the last ones sent)",
        "1 duplicates on a shim that never redelivers",
    ]
    redelivering = _report(SoakConfig(shim="queue"), redelivers=True)
    _count(redelivering, _spec(fanout=False), done)
    assert redelivering.failures() == [
        "1 of 6 deliveries lost",
        "producer 0: 1 missing, seq 3..3 (the last ones sent)",
    ]


def test_counting_tells_holes_from_a_tail_not_yet_arrived() -> None:
    done: dict[str, dict[str, Any]] = {
        "producer 0": {"sent": 20},
        "producer 1": {"sent": 20},
        # Producer 0: seq 5 and 9 never came (holes); producer 1: 17..19 did not come yet.
        "consumer 0": {
            "received": 35,
            "corrupt": 0,
            "bitmaps": [
                _bitmap(*(s for s in range(20) if s not in (5, 9))),
                _bitmap(*range(17)),
            ],
        },
        "consumer 1": {"received": 0, "corrupt": 0, "bitmaps": [b"", b""]},
    }
    report = _report(SoakConfig(shim="queue"))
    _count(report, _spec(fanout=False), done)
    assert report.lost == 5
    assert report.missing == [
        "producer 0: 2 missing, seq 5..9 (holes in what arrived)",
        "producer 1: 3 missing, seq 17..19 (the last ones sent)",
    ]


def test_counting_fan_out_expects_every_message_at_every_consumer() -> None:
    done: dict[str, dict[str, Any]] = {
        "producer 0": {"sent": 3},
        "consumer 0": {"received": 3, "corrupt": 0, "bitmaps": [_bitmap(0, 1, 2)]},
        # Consumer 1 missed message 2 (the other consumer's copy does not count).
        "consumer 1": {"received": 2, "corrupt": 0, "bitmaps": [_bitmap(0, 1)]},
    }
    report = _report(SoakConfig(shim="local"))
    _count(report, _spec(fanout=True, producers=1), done)
    assert (report.expected, report.received, report.unique) == (6, 5, 5)
    assert (report.lost, report.duplicated) == (1, 0)
    assert report.missing == [
        "consumer 1, from producer 0: 1 missing, seq 2..2 (the last ones sent)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shim", "carrier-pigeon"], "unknown shim"),
        (["--shim", "queue", "--store", "memory"], "private to one process"),
        (["--size", "4"], "at least 12 bytes"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["soak", "--seconds", "1", *args]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_competing_queue_subscribers_honour_their_timeout() -> None:
    # Found by the soak: several consumers of one multiprocessing.Queue. A
    # reader that sees qsize() > 0 while another reader has already taken the
    # bytes (its get() releases the count only afterwards) must still time
    # out; a timed receive that took the poll-free get() waited forever.
    q: Any = multiprocessing.get_context("spawn").Queue()
    try:
        subscriber = QueueSubscriber(q)
        QueuePublisher({"t": q}).send("t", b"taken by the other reader")
        assert q._reader.poll(10)
        with q._rlock:  # the other reader, caught between its recv and its count release
            assert q._reader.recv_bytes()
        assert q.qsize() == 1
        outcome: list[object] = []

        def receive() -> None:
            try:
                outcome.append(subscriber.receive(timeout=0.5))
            except StreamTimeoutError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        thread.join(10)
        hung = thread.is_alive()
        if hung:
            q.put(b"release the hung reader")
            thread.join(10)
        assert not hung, "a receive with timeout=0.5 was still waiting after 10 s"
        assert len(outcome) == 1
        assert isinstance(outcome[0], StreamTimeoutError)
    finally:
        q.cancel_join_thread()
        q.close()


@pytest.mark.skipif(not os.environ.get("PSS_LONG_SOAK"), reason="set PSS_LONG_SOAK=1")
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("shim", ["queue", "redis-stream", "rabbitmq-queue", "zmq"])
def test_long_soak(shim: str, use_async: bool) -> None:
    """The 60 s soak of the closing note; not part of the default run."""
    report = run_soak(SoakConfig(shim=shim, seconds=60, use_async=use_async))
    assert report.failures() == []


@pytest.mark.timeout(120)
def test_a_role_failing_during_setup_ends_the_run_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The soak's topic, known in advance, is a Redis string: a consumer
    # fails to create its group while its memory sampler waits for the
    # start. A multiprocessing.Event's set() then waited forever for that
    # dead waiter to wake; the run must end, reporting the consumer's error.
    require_broker("redis", "127.0.0.1", 6379)
    import uuid

    import redis

    fixed = uuid.uuid4()
    monkeypatch.setattr("proxystore_stream.cli.soak.uuid.uuid4", lambda: fixed)
    topic = f"soak-{fixed.hex[:12]}"
    with redis.Redis("127.0.0.1", 6379) as client:
        client.set(topic, "not a stream")
        try:
            report = run_soak(SoakConfig(shim="redis-stream", seconds=1, drain_seconds=5))
        finally:
            client.delete(topic)
    assert report.sent == 0
    failed = [e for e in report.errors if e.startswith("consumer") and "not a stream" in e]
    assert failed, report.errors
    assert report.failures()
