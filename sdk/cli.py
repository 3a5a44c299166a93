"""`orchestrator worker module:handler` (also `orchestrator-worker`): run a worker from the shell.

The target is `module:attribute`, imported with the current directory on `sys.path`. It names a
handler (`handler(payload) -> result`, coroutine function or plain function), or a mapping of
job kind to handler (the empty kind "" being the default). The API key comes from
`ORCH_API_KEY` or `--api-key-file`; `--api-key` works too, but puts the key where every user of
the machine can read it (the process's arguments). SIGTERM and SIGINT stop leasing and let
running jobs finish (up to `--shutdown-timeout`); a second signal abandons them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import logging.config
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from core import logfmt

from ._dispatch import DEFAULT_KIND
from ._errors import Forbidden, SdkError, Unauthorized
from ._outcome import Handler
from ._runner import WorkerRunner
from ._worker import WorkerClient

log = logging.getLogger("orchestrator.sdk")

EXIT_USAGE = 2
EXIT_REFUSED = 3


class UsageError(Exception):
    """The command line cannot be acted on."""


class TargetError(UsageError):
    """The handler could not be loaded."""


def load_target(spec: str) -> dict[str, Handler]:
    """`module:attribute` → handlers by kind, the one for `""` being the default."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"expected module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, Mapping):
        handlers: dict[str, Handler] = {}
        for kind, fn in target.items():
            if not isinstance(kind, str) or not callable(fn):
                raise TargetError(f"{spec} must map job kinds (str) to handlers")
            handlers[kind] = fn
        return handlers
    if callable(target):
        return {DEFAULT_KIND: target}
    raise TargetError(f"{spec} is neither a handler nor a mapping of kinds to handlers")


def _queues(values: Sequence[str]) -> list[str]:
    queues = [q.strip() for v in values for q in v.split(",") if q.strip()]
    return queues or ["default"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrator worker",
        description="Run a worker: lease jobs from the gateway and run a handler on each.",
    )
    p.add_argument("target", metavar="module:handler", help="the handler, or a mapping of job kind to handler")
    p.add_argument("--url", default=os.environ.get("ORCH_URL"), help="the gateway's URL (env ORCH_URL)")
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="a file holding the key: a tenant key, or a shared worker key (default: env ORCH_API_KEY)",
    )
    key.add_argument(
        "--api-key",
        help="the key itself; discouraged: other users of the machine can read a process's arguments",
    )
    p.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}", help="default: hostname-pid")
    p.add_argument(
        "--queues",
        action="append",
        default=[],
        help="queues to lease from, comma-separated or repeated (default: default)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    p.add_argument("--lease-seconds", type=int, default=30, help="lease length, renewed every third (default 30)")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds running jobs get to finish after SIGTERM (default 30)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        help="json (one object per line) or text; default ORCH_LOG_FORMAT, else json unless stdout is a terminal",
    )
    return p


def api_key(args: argparse.Namespace) -> str:
    """The key from `--api-key-file`, `--api-key` or `ORCH_API_KEY`, in that order."""
    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --api-key-file {args.api_key_file!r}: {exc}") from exc
        if not key:
            raise UsageError(f"--api-key-file {args.api_key_file!r} is empty")
        return key
    given: str = args.api_key or os.environ.get("ORCH_API_KEY", "").strip()
    if not given:
        raise UsageError("no API key: set ORCH_API_KEY or pass --api-key-file")
    return given


async def _serve(runner: WorkerRunner) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(runner.run())
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("worker %s: %s: stopping (again to abandon running jobs)", runner.client.worker_id, sig.name)
            runner.stop()
        else:
            log.warning("worker %s: %s again: abandoning running jobs", runner.client.worker_id, sig.name)
            task.cancel()

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except RuntimeError:  # not the main thread, or no signal support here (its subclass)
            pass
    try:
        await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        print(f"orchestrator worker: unknown log level {args.log_level!r}", file=sys.stderr)
        return EXIT_USAGE
    fmt = args.log_format or os.environ.get("ORCH_LOG_FORMAT", "").strip().lower() or logfmt.default_format()
    if fmt not in ("json", "text"):
        print(f"orchestrator worker: ORCH_LOG_FORMAT must be json or text, got {fmt!r}", file=sys.stderr)
        return EXIT_USAGE
    logging.config.dictConfig(logfmt.dict_config(args.log_level, "json" if fmt == "json" else "text"))
    err = sys.stderr
    if not args.url:
        print("orchestrator worker: no gateway URL: pass --url or set ORCH_URL", file=err)
        return EXIT_USAGE
    if args.concurrency < 1:
        print("orchestrator worker: --concurrency must be at least 1", file=err)
        return EXIT_USAGE
    try:
        key = api_key(args)
        handlers = load_target(args.target)
        client = WorkerClient(args.url, worker_id=args.worker_id, api_key=key, queues=_queues(args.queues))
        runner = WorkerRunner(
            client,
            handlers=handlers,
            concurrency=args.concurrency,
            lease_seconds=args.lease_seconds,
            shutdown_timeout_s=args.shutdown_timeout,
        )
    except (UsageError, ValueError) as exc:
        print(f"orchestrator worker: {exc}", file=err)
        return EXIT_USAGE
    if args.api_key is not None:
        log.warning(
            "worker %s: --api-key shows the key to every user of this machine; use ORCH_API_KEY or --api-key-file",
            args.worker_id,
        )
    kinds = ", ".join(repr(k) for k in handlers if k != DEFAULT_KIND) or "none"
    log.info(
        "worker %s: serving %s at %s (queues %s, concurrency %d, kinds %s%s)",
        args.worker_id,
        args.target,
        args.url,
        ",".join(client.queues),
        args.concurrency,
        kinds,
        ", with a default handler" if DEFAULT_KIND in handlers else "",
    )
    try:
        asyncio.run(_serve(runner))
    except (Unauthorized, Forbidden) as exc:
        print(f"orchestrator worker: the gateway refused the key: {exc}", file=err)
        return EXIT_REFUSED
    except SdkError as exc:
        print(f"orchestrator worker: {exc}", file=err)
        return 1
    except asyncio.CancelledError:
        return 1
    except KeyboardInterrupt:
        return 130
    log.info("worker %s: stopped", args.worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
