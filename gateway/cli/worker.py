"""`orchestrator worker`: the SDK's worker command, under the one `orchestrator` name."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Everything after `worker` goes to the SDK's own parser untouched: no option here may look like one.
    p = sub.add_parser(
        "worker", help="run a worker: orchestrator worker module:handler [--help]", add_help=False, prefix_chars="\0"
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=worker)


def worker(args: argparse.Namespace) -> int:
    from sdk.cli import main as worker_main

    result: int = worker_main(args.args)
    return result
