"""`orchestrator schedules list`: every tenant's cron schedules."""

from __future__ import annotations

import argparse

from .admin import Client, command, common_options, more, print_json, print_table, when


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("schedules", help="list the cron schedules of every tenant")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", parents=[common], help="schedules, oldest first")
    a.add_argument("--tenant")
    a.add_argument("--after", help="the cursor a previous page printed (more: --after ...)")
    a.add_argument("--limit", type=int, default=100, help="how many (1 to 1000, default 100)")
    a.set_defaults(func=command(list_schedules))


def list_schedules(args: argparse.Namespace, api: Client) -> int:
    query = {"tenant": args.tenant, "after": args.after, "limit": args.limit}
    body = api.call("GET", "/v1/admin/schedules", query=query)
    if args.json:
        print_json(body)
        return 0
    rows = (
        (
            s["tenant_id"],
            s["name"],
            s["cron"],
            s["timezone"],
            s["queue"],
            s["paused"],
            when(s["next_fire_at"]),
            when(s["last_fired_at"]),
        )
        for s in body["schedules"]
    )
    columns = ("tenant", "name", "cron", "timezone", "queue", "paused", "next fire", "last fired")
    print_table(columns, rows, empty="no schedules")
    more(body["next"])
    return 0
