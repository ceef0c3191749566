"""Shared argument parsing for the example scripts."""

from __future__ import annotations

import argparse


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--broker", choices=["local", "redis"], default="local")
    parser.add_argument("--topic", default="examples")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--port", type=int, default=6379)
    return parser.parse_args()
