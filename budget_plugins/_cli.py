"""The ``budget-plugins`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from budget_plugins._demo import run_demo

    ledger = None
    if args.redis:
        from budget_plugins import ledger_from_url  # type: ignore[attr-defined]

        ledger = ledger_from_url(args.redis)
    run_demo(safety_stop=args.safety_stop, ledger=ledger)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="budget-plugins", description="Execution budgets inside agent loops.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the runaway-agent demo (no network, no keys)")
    demo.add_argument("--safety-stop", type=int, default=60, help="model calls before the unguarded run is cut off")
    demo.add_argument("--redis", metavar="URL", help="use a Redis ledger for the guarded run")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``budget-plugins`` and ``python -m budget_plugins``."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
