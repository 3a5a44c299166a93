"""`orchestrator queues ...`: every tenant's queues; pausing and resuming them."""

from __future__ import annotations

import argparse

from .admin import Client, command, common_options, print_json, print_line, print_table, segment


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("queues", help="list, pause and resume queues")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("list", parents=[common], help="queues that are paused or hold open or dead jobs")
    a.add_argument("--tenant")
    a.set_defaults(func=command(list_queues))

    for name, what in (("pause", "leases skip it until it is resumed"), ("resume", "leases take its jobs again")):
        a = actions.add_parser(name, parents=[common], help=f"{name} a tenant's queue: {what}")
        a.add_argument("tenant_id")
        a.add_argument("queue")
        a.set_defaults(func=command(pause if name == "pause" else resume))


def list_queues(args: argparse.Namespace, api: Client) -> int:
    body = api.call("GET", "/v1/admin/queues", query={"tenant": args.tenant})
    if args.json:
        print_json(body)
        return 0
    rows = (
        (
            q["tenant_id"],
            q["queue"],
            q["paused"],
            q["ready"],
            q["scheduled"],
            q["running"],
            q["dead"],
            None if q["oldest_ready_seconds"] is None else f"{q['oldest_ready_seconds']:.1f}",
        )
        for q in body["queues"]
    )
    columns = ("tenant", "queue", "paused", "ready", "scheduled", "running", "dead", "oldest ready (s)")
    print_table(columns, rows, empty="no queues")
    return 0


def _set(args: argparse.Namespace, api: Client, action: str) -> int:
    path = f"/v1/admin/tenants/{segment(args.tenant_id)}/queues/{segment(args.queue)}/{action}"
    body = api.call("POST", path)
    if args.json:
        print_json(body)
    else:
        print_line(f"{body['tenant_id']}/{body['queue']}: {'paused' if body['paused'] else 'running'}")
    return 0


def pause(args: argparse.Namespace, api: Client) -> int:
    return _set(args, api, "pause")


def resume(args: argparse.Namespace, api: Client) -> int:
    return _set(args, api, "resume")
