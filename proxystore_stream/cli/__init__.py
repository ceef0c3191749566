"""The ``proxystore-stream`` command line: ``demo``, ``bench`` and ``soak``.

Exit codes: 0 success, 1 a check failed (a demo object did not verify, a
bench run errored, a soak lost messages), 2 a usage error (unknown shim,
missing extra, bad argument, unreachable broker for soak). Usage errors
print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from proxystore_stream.exceptions import MissingDependencyError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _size_list(text: str) -> list[int]:
    from proxystore_stream.cli.bench import parse_sizes

    try:
        sizes = parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``proxystore-stream``."""
    from proxystore_stream.cli.bench import DEFAULT_SIZES
    from proxystore_stream.cli.bench import STORES
    from proxystore_stream.cli.targets import TARGETS

    parser = argparse.ArgumentParser(
        prog="proxystore-stream",
        description="Stream Python objects between processes through message brokers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="stream a few hundred MB producer -> consumer -> worker (no broker)",
        description=(
            "Stream array-like objects from a producer process through the "
            "multiprocessing-queue shim and a file store to a consumer process, "
            "which forwards the unresolved proxies to a worker process that "
            "resolves and verifies them."
        ),
    )
    demo.add_argument(
        "--size-mb",
        type=_positive_float,
        default=300.0,
        help="total MB to stream (default: 300)",
    )
    demo.add_argument(
        "--object-mb",
        type=_positive_float,
        default=10.0,
        help="MB per object (default: 10)",
    )
    demo.add_argument(
        "--shim",
        default="queue",
        help=(
            "broker shim; only 'queue' crosses processes ('local' is in-process "
            "only: try it with `bench --shim local`)"
        ),
    )
    demo.add_argument(
        "--dir", default=None, help="where the file store writes (default: a temp dir)"
    )

    bench = commands.add_parser(
        "bench",
        help="throughput and latency of our path vs the bare transport",
        description=(
            "For each payload size, time StreamProducer -> StreamConsumer over a "
            "shim against the broker's own client doing the same work, in the "
            "same run."
        ),
    )
    bench.add_argument(
        "--shim",
        default="queue",
        help=f"shim to measure (default: queue; known: {', '.join(sorted(TARGETS))})",
    )
    bench.add_argument(
        "--sizes",
        type=_size_list,
        default=_size_list(DEFAULT_SIZES),
        help=f"comma-separated payload sizes (default: {DEFAULT_SIZES})",
    )
    bench.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        help="messages per size (default: ~200 MB per size, at most 20,000)",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1,
        help="objects per message on our path (default: 1)",
    )
    bench.add_argument(
        "--store",
        choices=STORES,
        default="none",
        help="none (inline), file, memory or redis (default: none)",
    )
    bench.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="drive our path with AsyncStreamProducer/AsyncStreamConsumer",
    )
    bench.add_argument(
        "--topics",
        type=_positive_int,
        default=1,
        help="also run K topics concurrently in one process (K threads or tasks)",
    )
    bench.add_argument(
        "--seconds-limit",
        type=_positive_float,
        default=10.0,
        help="seconds each measurement may send for at most (default: 10)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        help="rounds per size, paths alternating; the fastest round is kept (default: 3)",
    )
    bench.add_argument("--dir", default=None, help="where file stores write (default: a temp dir)")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    _add_soak(commands)
    return parser


def _size(text: str) -> int:
    from proxystore_stream.cli.bench import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_soak(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from proxystore_stream.cli.soak import SHIMS
    from proxystore_stream.cli.soak import STORES

    soak = commands.add_parser(
        "soak",
        help="stream for a fixed time with several producers and consumers; count every message",
        description=(
            "Producer and consumer processes (threads for 'local') stream through "
            "a shim for a fixed time. Every message carries (producer, sequence "
            "number); the report shows throughput, memory growth per process, and "
            "sent/received/lost/duplicated counts. Exit code 1 if anything was lost."
        ),
    )
    soak.add_argument(
        "--shim",
        default="queue",
        help=f"shim to drive (default: queue; known: {', '.join(SHIMS)})",
    )
    soak.add_argument(
        "--seconds",
        type=_positive_float,
        default=60.0,
        help="seconds the producers send for (default: 60)",
    )
    soak.add_argument("--producers", type=_positive_int, default=2, help="producers (default: 2)")
    soak.add_argument("--consumers", type=_positive_int, default=2, help="consumers (default: 2)")
    soak.add_argument(
        "--size", type=_size, default=1024, help="payload size, e.g. 100, 10KiB (default: 1KiB)"
    )
    soak.add_argument(
        "--store",
        choices=STORES,
        default="none",
        help="none (inline), file, or memory (local only) (default: none)",
    )
    soak.add_argument(
        "--batch-size", type=_positive_int, default=1, help="objects per message (default: 1)"
    )
    soak.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=10_000,
        help="messages sent but not yet received at most (default: 10000)",
    )
    soak.add_argument(
        "--drain-seconds",
        type=_positive_float,
        default=30.0,
        help="seconds after sending to wait for the last messages at most (default: 30)",
    )
    soak.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="drive AsyncStreamProducer/AsyncStreamConsumer and the async shims",
    )
    soak.add_argument("--dir", default=None, help="where the file store writes (default: temp)")
    soak.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the report as JSON ('-': print JSON instead of the tables)",
    )


def _demo(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from proxystore_stream.cli.demo import DemoConfig
    from proxystore_stream.cli.demo import DemoError
    from proxystore_stream.cli.demo import run_demo

    try:
        config = DemoConfig(
            size_mb=args.size_mb,
            object_mb=args.object_mb,
            shim=args.shim,
            directory=args.dir,
        )
        ok = run_demo(config, console)
    except DemoError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    return EXIT_OK if ok else EXIT_FAILED


def _bench(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from proxystore_stream.cli.bench import BenchConfig
    from proxystore_stream.cli.bench import BenchError
    from proxystore_stream.cli.bench import results_table
    from proxystore_stream.cli.bench import run_bench
    from proxystore_stream.cli.bench import write_json

    config = BenchConfig(
        shim=args.shim,
        sizes=args.sizes,
        count=args.count,
        batch_size=args.batch_size,
        store=args.store,
        use_async=args.use_async,
        topics=args.topics,
        seconds_limit=args.seconds_limit,
        directory=args.dir,
        repeat=args.repeat,
    )
    try:
        results = run_bench(config, console)
    except BenchError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    console.print(results_table(config, results))
    if args.json:
        write_json(args.json, config, results)
        console.print(f"results written to {args.json}", highlight=False)
    failed = [r for r in results if r.error]
    for result in failed:
        console.print(
            f"[red]failed:[/red] {result.label} at {result.size} B: {result.error}",
            highlight=False,
        )
    return EXIT_FAILED if failed else EXIT_OK


def _soak(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from proxystore_stream.cli.soak import SoakConfig
    from proxystore_stream.cli.soak import SoakError
    from proxystore_stream.cli.soak import report_tables
    from proxystore_stream.cli.soak import run_soak
    from proxystore_stream.cli.soak import write_json

    config = SoakConfig(
        shim=args.shim,
        seconds=args.seconds,
        producers=args.producers,
        consumers=args.consumers,
        size=args.size,
        store=args.store,
        batch_size=args.batch_size,
        max_in_flight=args.max_in_flight,
        drain_seconds=args.drain_seconds,
        directory=args.dir,
        use_async=args.use_async,
    )
    quiet = args.json == "-"
    try:
        report = run_soak(config, errors if quiet else console)
    except SoakError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    if args.json:
        write_json(args.json, report)
    if not quiet:
        console.print(report_tables(report))
        if args.json:
            console.print(f"report written to {args.json}", highlight=False)
    failures = report.failures()
    out = errors if quiet else console
    for failure in failures:
        out.print(f"[red]FAIL[/red] {escape(failure)}", highlight=False)
    if not failures:
        out.print(
            f"[green]PASS[/green] {report.unique:,} of {report.expected:,} deliveries, none lost",
            highlight=False,
        )
    return EXIT_FAILED if failures else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``proxystore-stream`` with `argv` (default: the process arguments).

    Returns:
        The exit code: 0 success, 1 a check failed, 2 a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Piped or captured: room for the whole table on one line per row.
        console = Console(width=max(console.width, 170))
    errors = Console(stderr=True)
    try:
        if args.command == "demo":
            return _demo(args, console, errors)
        if args.command == "soak":
            return _soak(args, console, errors)
        return _bench(args, console, errors)
    except MissingDependencyError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        errors.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
