"""What the operator's commands share: the HTTP client for `/v1/admin`, its options, the
one-line errors and exit codes, and the output (a table, or the server's JSON).

The client is urllib from the standard library: a command makes one or two requests and
exits, so an event loop and a session (aiohttp) would buy nothing, and every command stays a
plain function.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_SECONDS = 30.0

# Exit codes: 2 a usage error (argparse's own too), 1 a request the server refused, 3 no answer.
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CommandError(Exception):
    """Ends a command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def usage(message: str) -> CommandError:
    return CommandError(message, EXIT_USAGE)


def common_options() -> argparse.ArgumentParser:
    """The options every operator command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--url",
        default=os.environ.get("ORCH_URL") or DEFAULT_URL,
        help=f"the gateway (default: $ORCH_URL, else {DEFAULT_URL})",
    )
    p.add_argument("--token-file", type=Path, help="a file holding the admin token (default: $ORCH_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    p.add_argument("--timeout", type=float, default=TIMEOUT_SECONDS, help="seconds to wait for an answer")
    return p


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_token(args: argparse.Namespace) -> str:
    """--token-file, else $ORCH_ADMIN_TOKEN, else (for a gateway on this machine) the token
    `orchestrator serve` generated into its data folder."""
    token_file: Path | None = args.token_file
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise usage(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise usage(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get("ORCH_ADMIN_TOKEN", "").strip()
    if token:
        return token
    kept = Path(os.environ.get("ORCH_DATA_DIR") or ".orchestrator") / "admin_token"
    if _is_loopback(args.url) and kept.is_file():
        return kept.read_text().strip()
    raise usage("no admin token: set ORCH_ADMIN_TOKEN or pass --token-file")


def segment(value: str) -> str:
    """A value as one path segment."""
    return urllib.parse.quote(value, safe="")


class Client:
    """The operator's requests to one gateway, with the bearer token."""

    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise usage(f"--url must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener()

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: object = None,
    ) -> Any:
        """The decoded JSON answer (None when there is no body); CommandError otherwise."""
        pairs = [
            (k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items() if v is not None
        ]
        target = self.url + path + (f"?{urllib.parse.urlencode(pairs)}" if pairs else "")
        data = None if body is None else msgspec.json.encode(body)
        req = urllib.request.Request(target, data=data, method=method)  # noqa: S310 (http(s) only: see __init__)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        # Unredirected: a redirect to another host must not carry the token along.
        req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise CommandError(_refusal(exc.code, exc.reason, exc.read()), EXIT_REFUSED) from None
        except TimeoutError:
            raise CommandError(f"no answer from {self.url} within {self._timeout:g} s", EXIT_UNREACHABLE) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise CommandError(f"cannot reach {self.url}: {reason}", EXIT_UNREACHABLE) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(f"cannot reach {self.url}: {exc or type(exc).__name__}", EXIT_UNREACHABLE) from None
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise CommandError(f"{self.url} answered something that is not JSON", EXIT_REFUSED) from None


def _refusal(status: int, reason: str, raw: bytes) -> str:
    """One line: the status, the problem's title and its detail."""
    title, detail = reason, ""
    try:
        problem = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        detail = raw.decode(errors="replace").strip()[:300]
    else:
        if isinstance(problem, dict):
            title = str(problem.get("title") or reason)
            detail = str(problem.get("detail") or "")
    text = f"{status} {title}" + (f": {detail}" if detail else "")
    return " ".join(text.split())


def client(args: argparse.Namespace) -> Client:
    return Client(args.url, admin_token(args), timeout=args.timeout)


Command = Callable[[argparse.Namespace, Client], int]


def command(func: Command) -> Callable[[argparse.Namespace], int]:
    """A command as `set_defaults(func=...)` takes it: its errors become one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args, client(args))
        except CommandError as exc:
            print(f"orchestrator: {exc.message}", file=sys.stderr)
            return exc.code

    return run


# --- output ---------------------------------------------------------------------------------


def _console() -> Console:
    # Piped, a table is as wide as its content, never cut to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 10_000, highlight=False)


def print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def when(value: object) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC); '-' for none."""
    if not isinstance(value, str) or not value:
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str = "none") -> None:
    rows = list(rows)
    console = _console()
    if not rows:
        console.print(f"({empty})")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    console.print(table)


def print_fields(pairs: Iterable[tuple[str, object]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(name, cell(value))
    _console().print(table)


def print_line(text: str) -> None:
    _console().print(text, markup=False)


def more(next_cursor: object) -> None:
    """The hint after a page that has more."""
    if next_cursor is not None:
        print_line(f"more: --after {next_cursor}")
