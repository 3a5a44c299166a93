"""`orchestrator jobs ...`: every tenant's jobs, over the admin API."""

from __future__ import annotations

import argparse
from typing import Any

from core import JobState

from .admin import Client, command, common_options, more, print_fields, print_json, print_table, segment, when

JOB_COLUMNS = ("id", "tenant", "queue", "kind", "state", "attempts", "created", "worker")


def job_row(j: dict[str, Any]) -> tuple[object, ...]:
    return (
        j["id"],
        j["tenant_id"],
        j["queue"],
        j["kind"] or "-",
        j["state"],
        f"{j['attempts']}/{j['max_attempts']}",
        when(j["created_at"]),
        j.get("worker_id"),
    )


def page_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--after", help="the cursor a previous page printed (more: --after ...)")
    p.add_argument("--limit", type=int, default=50, help="how many (1 to 1000, default 50)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("jobs", help="list, inspect, cancel and retry the jobs of every tenant")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("list", parents=[common], help="jobs, newest first, filtered")
    a.add_argument("--tenant")
    a.add_argument("--queue")
    a.add_argument("--state", choices=[s.value for s in JobState])
    a.add_argument("--kind")
    a.add_argument("--id", dest="job_id", help="one job by id")
    a.add_argument("--idempotency-key")
    page_options(a)
    a.set_defaults(func=command(list_jobs))

    a = actions.add_parser("get", parents=[common], help="a job with its lease and its events")
    a.add_argument("job_id")
    a.set_defaults(func=command(get))

    a = actions.add_parser("cancel", parents=[common], help="cancel a job (a running one at its next report)")
    a.add_argument("job_id")
    a.set_defaults(func=command(cancel))

    a = actions.add_parser("retry", parents=[common], help="send a dead or cancelled job back to ready")
    a.add_argument("job_id")
    a.set_defaults(func=command(retry))


def list_page(args: argparse.Namespace, api: Client, query: dict[str, object]) -> dict[str, Any]:
    body: dict[str, Any] = api.call("GET", "/v1/admin/jobs", query={**query, "after": args.after, "limit": args.limit})
    return body


def list_jobs(args: argparse.Namespace, api: Client) -> int:
    query: dict[str, object] = {
        "tenant": args.tenant,
        "queue": args.queue,
        "state": args.state,
        "kind": args.kind,
        "id": args.job_id,
        "idempotency_key": args.idempotency_key,
    }
    body = list_page(args, api, query)
    if args.json:
        print_json(body)
        return 0
    print_table(JOB_COLUMNS, (job_row(j) for j in body["jobs"]), empty="no jobs")
    more(body["next"])
    return 0


def _show(args: argparse.Namespace, job: dict[str, Any]) -> int:
    if args.json:
        print_json(job)
    else:
        print_fields((k.replace("_", " "), when(v) if k.endswith("_at") else v) for k, v in job.items())
    return 0


def get(args: argparse.Namespace, api: Client) -> int:
    body = api.call("GET", f"/v1/admin/jobs/{segment(args.job_id)}")
    if args.json:
        print_json(body)
        return 0
    _show(args, body["job"])
    print()
    rows = ((when(e["at"]), e["type"], e["data"]) for e in body["events"])
    print_table(("at", "event", "data"), rows, empty="no events retained")
    if body["events_truncated"]:
        print("(older events left out)")
    return 0


def cancel(args: argparse.Namespace, api: Client) -> int:
    return _show(args, api.call("POST", f"/v1/admin/jobs/{segment(args.job_id)}/cancel"))


def retry(args: argparse.Namespace, api: Client) -> int:
    return _show(args, api.call("POST", f"/v1/admin/jobs/{segment(args.job_id)}/retry"))
