"""End-to-end tests of the ``proxystore-stream`` command line (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxystore_stream.cli.bench import auto_count
from proxystore_stream.cli.bench import parse_size
from proxystore_stream.cli.bench import parse_sizes

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
    assert "ours x2 topics" in result.stdout
    paths = [row["path"] for row in json.loads(out_json.read_text())["results"]]
    assert paths == ["ours", "bare", "file", "ours-concurrent"]
    # The bench cleans up its own files.
    assert [p for p in tmp_path.iterdir() if p.name != "bench.json"] == []


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
