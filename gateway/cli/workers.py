"""`orchestrator workers list`: the workers holding leases now (`orchestrator worker` runs one)."""

from __future__ import annotations

import argparse

from .admin import Client, command, common_options, print_json, print_table, when


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("workers", help="list the workers that hold leases now")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", parents=[common], help="worker ids with their leases")
    a.add_argument("--tenant", help="only leases of this tenant's jobs")
    a.set_defaults(func=command(list_workers))


def list_workers(args: argparse.Namespace, api: Client) -> int:
    body = api.call("GET", "/v1/admin/workers", query={"tenant": args.tenant})
    if args.json:
        print_json(body)
        return 0
    rows = (
        (
            w["worker_id"],
            w["leases"],
            w["expired"],
            w["tenants"],
            w["queues"],
            when(w["last_leased_at"]),
            when(w["next_expiry_at"]),
        )
        for w in body["workers"]
    )
    columns = ("worker", "leases", "expired", "tenants", "queues", "last lease", "next expiry")
    print_table(columns, rows, empty="no worker holds a lease")
    return 0
