"""The compose file's worker key: created once through the admin API, kept in a volume.

    python deploy/worker_key.py create          # ensure ORCH_WORKER_KEY_FILE holds a shared worker key
    python deploy/worker_key.py exec CMD ...    # run CMD with ORCH_API_KEY read from that file

`create` keeps a key already there, so restarts do not pile up keys; it asks the gateway at
ORCH_URL with ORCH_ADMIN_TOKEN otherwise. `exec` leaves an ORCH_API_KEY set by the operator
alone (a tenant key, say). Standard library only: it runs in the image before anything else.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_FILE = "/var/lib/orchestrator/keys/worker-key"
WAIT_SECONDS = 120.0


def _key_file() -> Path:
    return Path(os.environ.get("ORCH_WORKER_KEY_FILE") or DEFAULT_FILE)


def _request_key(url: str, token: str) -> str:
    req = urllib.request.Request(  # noqa: S310 (create() allows http and https alone)
        url.rstrip("/") + "/v1/admin/worker-keys",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        key: str = json.load(resp)["api_key"]
        return key


def create() -> int:
    path = _key_file()
    if path.exists() and path.read_text().strip():
        print(f"worker key kept in {path}")
        return 0
    url = os.environ.get("ORCH_URL")
    token = os.environ.get("ORCH_ADMIN_TOKEN")
    if not url or not token:
        print("worker_key: ORCH_URL and ORCH_ADMIN_TOKEN must be set", file=sys.stderr)
        return 2
    if not url.startswith(("http://", "https://")):
        print(f"worker_key: ORCH_URL must be an http(s) URL, got {url!r}", file=sys.stderr)
        return 2
    # The gateway may still be starting: retry refused connections and 503s until a deadline.
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            key = _request_key(url, token)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                print(
                    f"worker_key: the gateway answered {exc.code}: {exc.read().decode(errors='replace')}",
                    file=sys.stderr,
                )
                return 1
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                print(f"worker_key: cannot reach {url}: {exc}", file=sys.stderr)
                return 1
        time.sleep(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)  # a worker never reads half a key
    print(f"created a shared worker key {key.partition('.')[0]} in {path}")
    return 0


def exec_with_key(argv: list[str]) -> int:
    if not argv:
        print("worker_key: exec needs a command", file=sys.stderr)
        return 2
    if not os.environ.get("ORCH_API_KEY"):
        path = _key_file()
        try:
            os.environ["ORCH_API_KEY"] = path.read_text().strip()
        except OSError as exc:
            print(f"worker_key: no ORCH_API_KEY and no key file: {exc}", file=sys.stderr)
            return 2
    try:
        # Replaces this process, so the worker itself receives the stop signal.
        os.execvp(argv[0], argv)  # noqa: S606
    except OSError as exc:
        print(f"worker_key: cannot run {argv[0]}: {exc}", file=sys.stderr)
    return 127


def main(argv: list[str]) -> int:
    if argv[:1] == ["create"] and len(argv) == 1:
        return create()
    if argv[:1] == ["exec"]:
        return exec_with_key(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
