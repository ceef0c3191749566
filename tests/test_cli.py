"""End-to-end tests of the ``proxystore-stream`` command line (subprocesses)."""

from __future__ import annotations

import io
import json
import math
import queue
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from proxystore_stream.cli.bench import BenchConfig
from proxystore_stream.cli.bench import Measurement
from proxystore_stream.cli.bench import auto_count
from proxystore_stream.cli.bench import parse_size
from proxystore_stream.cli.bench import parse_sizes
from proxystore_stream.cli.bench import ratios
from proxystore_stream.cli.bench import results_table
from proxystore_stream.cli.bench import run_bench
from proxystore_stream.cli.targets import TARGETS
from proxystore_stream.cli.targets import inprocess
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxystore_stream", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_parse_sizes() -> None:
    assert parse_sizes("100,10KiB,1MiB,10MiB") == [100, 10 * 1024, 1024**2, 10 * 1024**2]
    assert parse_size("2MB") == 2_000_000
    assert parse_size("1.5k") == 1500
    for bad in ("", "ten", "10XB", "0"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_auto_count_is_bounded() -> None:
    assert auto_count(100, 10) == 20_000
    assert auto_count(10 * 1024**2, 10) == 20
    assert auto_count(1024**3, 10) == 10


@pytest.mark.timeout(60)
def test_demo_small_end_to_end() -> None:
    result = run_cli("demo", "--size-mb", "20", "--object-mb", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "What moved where" in out
    assert "verified 4 objects, 20.0 MB" in out
    assert "FAIL" not in out
    assert out.count("PASS") >= 6
    assert "events -> broker" in out
    assert "objects -> store (FileConnector)" in out


def test_demo_refuses_the_local_shim() -> None:
    result = run_cli("demo", "--shim", "local")
    assert result.returncode == 2
    assert "one process only" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_bench_queue_small(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        "--shim",
        "queue",
        "--sizes",
        "100,10KiB",
        "--count",
        "300",
        "--repeat",
        "1",
        "--batch-size",
        "8",
        "--json",
        str(out_json),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bench --shim queue --store none --batch-size 8" in result.stdout
    assert "bare mp.Queue" in result.stdout
    assert "100 B" in result.stdout
    assert "10 KiB" in result.stdout
    document = json.loads(out_json.read_text())
    rows = document["results"]
    assert [(row["size"], row["path"]) for row in rows] == [
        (100, "ours"),
        (100, "bare"),
        (10240, "ours"),
        (10240, "bare"),
    ]
    for row in rows:
        assert row["count"] == 300
        assert row["error"] is None
        assert row["messages_per_second"] > 0
    assert all(row["ratio_vs_bare"] > 0 for row in rows if row["path"] == "ours")


@pytest.mark.timeout(90)
def test_bench_file_store_and_async_concurrent_topics(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        "--sizes",
        "1MiB",
        "--count",
        "20",
        "--repeat",
        "1",
        "--store",
        "file",
        "--async",
        "--topics",
        "2",
        "--dir",
        str(tmp_path),
        "--json",
        str(out_json),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plain files" in result.stdout
    assert "ours x2 topics async" in result.stdout
    assert "ours x2 topics sync" in result.stdout
    assert "async/sync" in result.stdout
    rows = json.loads(out_json.read_text())["results"]
    # --async measures the sync twins in the same run, for a same-run ratio.
    assert [row["path"] for row in rows] == [
        "ours",
        "ours-sync",
        "bare",
        "file",
        "ours-concurrent",
        "ours-concurrent-sync",
    ]
    for row in rows:
        assert row["error"] is None, row
        assert row["count"] == 20
        assert row["cpu_us_per_message"] > 0, row
        expected = row["path"] in ("ours", "ours-concurrent")
        assert (row["ratio_async_over_sync"] is not None) is expected, row
    by_path = {row["path"]: row for row in rows}
    for path in ("ours", "ours-concurrent"):
        sync = by_path[f"{path}-sync"]["messages_per_second"]
        ratio = by_path[path]["messages_per_second"] / sync
        assert by_path[path]["ratio_async_over_sync"] == pytest.approx(ratio)
    # The bench cleans up its own files.
    assert [p for p in tmp_path.iterdir() if p.name != "bench.json"] == []


def test_bench_records_a_failing_path_and_measures_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A path that fails (here: our endpoints cannot open) becomes that row's
    # error; the bare path of the same size and the other sizes still run.
    fake = types.ModuleType("pss_fake_target")

    def open_endpoints(name: str, topic: str) -> tuple[object, object]:
        raise ValueError("message is larger than the broker's limit")

    fake.open_endpoints = open_endpoints  # type: ignore[attr-defined]
    fake.open_bare = inprocess.open_bare  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pss_fake_target", fake)
    monkeypatch.setitem(TARGETS, "local", "pss_fake_target")
    config = BenchConfig(shim="local", sizes=[100, 1000], count=50, repeat=2, seconds_limit=5)
    results = run_bench(config, Console(file=io.StringIO()))
    assert [(r.size, r.path) for r in results] == [
        (100, "ours"),
        (100, "bare"),
        (1000, "ours"),
        (1000, "bare"),
    ]
    for result in results:
        if result.path == "ours":
            assert result.error == "ValueError: message is larger than the broker's limit"
            assert result.count == 0
        else:
            assert result.error is None
            assert result.count == 50
    # The table shows the error in its row, beside the others' per-round ratios.
    out = io.StringIO()
    Console(file=out, width=200).print(results_table(config, results))
    assert out.getvalue().count("ValueError: message is larger") == 2
    assert "vs bare, rounds" in out.getvalue()


class _Twice:
    """A subscriber that delivers every message twice (as after a rebalance)."""

    def __init__(self, subscriber: QueueSubscriber) -> None:
        self._subscriber = subscriber
        self._again: bytes | None = None
        self._warm = 16  # the bench's warm-up messages come once

    def receive(self, timeout: float | None = None) -> bytes:
        if self._again is not None:
            message, self._again = self._again, None
            return message
        message = self._subscriber.receive(timeout)
        if self._warm:
            self._warm -= 1
        else:
            self._again = message
        return message

    def __iter__(self) -> Any:
        return iter(self._subscriber)

    def close(self) -> None:
        self._subscriber.close()


def test_bench_drops_duplicate_deliveries_by_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pss_twice_target")

    def open_endpoints(name: str, topic: str) -> tuple[object, object]:
        q: queue.Queue[bytes] = queue.Queue()
        return QueuePublisher({topic: q}), _Twice(QueueSubscriber(q))

    fake.open_endpoints = open_endpoints  # type: ignore[attr-defined]
    fake.open_bare = inprocess.open_bare  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pss_twice_target", fake)
    monkeypatch.setitem(TARGETS, "local", "pss_twice_target")
    config = BenchConfig(shim="local", sizes=[100], count=50, repeat=1, seconds_limit=5)
    ours = run_bench(config, Console(file=io.StringIO()))[0]
    assert ours.path == "ours"
    assert ours.error is None
    assert ours.count == 50
    assert ours.duplicates == 50


def test_bench_unknown_shim_lists_known_ones() -> None:
    result = run_cli("bench", "--shim", "carrier-pigeon")
    assert result.returncode == 2
    assert "unknown shim 'carrier-pigeon'" in result.stderr
    assert "queue" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_missing_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['pika'] = None; "
        "from proxystore_stream.cli import main; "
        "sys.exit(main(['bench', '--shim', 'rabbitmq']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "proxystore-stream[rabbitmq]" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_bad_size_is_a_usage_error() -> None:
    result = run_cli("bench", "--sizes", "lots")
    assert result.returncode == 2
    assert "not a size" in result.stderr


def test_ratios_pair_rounds_and_leave_out_failed_ones() -> None:
    ours = Measurement("ours", "ours", 100, count=10, seconds=0.2)
    ours.round_per_message = [0.04, 0.02, 0.03]
    sync = Measurement("ours-sync", "ours sync", 100, count=10, seconds=0.1)
    sync.round_per_message = [0.01, 0.03, 0.06]
    bare = Measurement("bare", "bare", 100, count=10, seconds=0.1)
    bare.round_per_message = [0.02, 0.01, math.inf]  # round 3 of bare failed
    found = dict((m.path, r) for m, r in ratios([ours, sync, bare]))
    assert found["ours"].vs_bare_rounds == pytest.approx([2.0, 2.0])
    # async/sync compares rates: the sync twin's time per message over ours.
    assert found["ours"].async_over_sync_rounds == pytest.approx([0.25, 1.5, 2.0])
    assert found["bare"].vs_bare_rounds == []


@pytest.mark.timeout(90)
def test_bench_reports_each_rounds_ratio(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    result = run_cli(
        "bench",
        "--shim",
        "local",
        "--sizes",
        "100",
        "--count",
        "200",
        "--repeat",
        "3",
        "--async",
        "--json",
        str(out_json),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vs bare, rounds" in result.stdout
    assert "async/sync, rounds" in result.stdout
    rows = {row["path"]: row for row in json.loads(out_json.read_text())["results"]}
    for path in ("ours", "ours-sync", "bare"):
        assert len(rows[path]["round_per_message"]) == 3
        assert all(x > 0 for x in rows[path]["round_per_message"])
    ours, bare, sync = (rows[path]["round_per_message"] for path in ("ours", "bare", "ours-sync"))
    expected = [a / b for a, b in zip(ours, bare, strict=True)]
    assert rows["ours"]["ratio_vs_bare_rounds"] == pytest.approx(expected)
    expected = [s / a for a, s in zip(ours, sync, strict=True)]
    assert rows["ours"]["ratio_async_over_sync_rounds"] == pytest.approx(expected)
    # The reported ratio is that of the fastest rounds.
    assert rows["ours"]["ratio_vs_bare"] == pytest.approx(min(ours) / min(bare))


@pytest.mark.timeout(180)
def test_a_kafka_bench_deletes_the_topics_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka import KafkaAdminClient

    from tests.kafka_broker import bootstrap

    servers = bootstrap()
    monkeypatch.setenv("PSS_KAFKA_BOOTSTRAP", servers)
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        before = set(admin.list_topics())
        config = BenchConfig(shim="kafka", sizes=[100], count=50, repeat=2, seconds_limit=20)
        results = run_bench(config, Console(file=io.StringIO()))
        assert [(r.path, r.error, r.count) for r in results] == [
            ("ours", None, 50),
            ("bare", None, 50),
        ]
        # Two rounds of ours and of bare made four topics; none is left.
        assert {t for t in admin.list_topics() if t.startswith("bench-")} <= before
    finally:
        admin.close()
