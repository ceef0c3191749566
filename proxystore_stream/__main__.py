"""``python -m proxystore_stream``: the command line (`proxystore_stream.cli`)."""

from __future__ import annotations

from proxystore_stream.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
