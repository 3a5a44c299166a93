"""`orchestrator dead ...`: the dead-letter queues, over the admin API."""

from __future__ import annotations

import argparse

from .admin import Client, command, common_options, more, print_json, print_line, print_table, usage, when
from .jobs import list_page, page_options


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("dead", help="list and replay dead jobs")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("list", parents=[common], help="dead jobs, newest first")
    a.add_argument("--tenant")
    a.add_argument("--queue")
    page_options(a)
    a.set_defaults(func=command(list_dead))

    a = actions.add_parser("replay", parents=[common], help="send a tenant's dead jobs back to ready")
    a.add_argument("--tenant", required=True)
    a.add_argument("--queue", help="only this queue's")
    a.add_argument("--id", dest="ids", action="append", metavar="JOB_ID", help="only these jobs (repeatable)")
    a.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    a.set_defaults(func=command(replay))


def list_dead(args: argparse.Namespace, api: Client) -> int:
    body = list_page(args, api, {"state": "dead", "tenant": args.tenant, "queue": args.queue})
    if args.json:
        print_json(body)
        return 0
    rows = (
        (j["id"], j["tenant_id"], j["queue"], j["kind"] or "-", j["attempts"], when(j["finished_at"]), j["last_error"])
        for j in body["jobs"]
    )
    print_table(("id", "tenant", "queue", "kind", "attempts", "died", "last error"), rows, empty="no dead jobs")
    more(body["next"])
    return 0


def replay(args: argparse.Namespace, api: Client) -> int:
    if args.ids and args.queue:
        raise usage("give --id or --queue, not both")
    req: dict[str, object] = {"tenant_id": args.tenant, "limit": args.limit}
    if args.ids:
        req["ids"] = args.ids
    if args.queue:
        req["queue"] = args.queue
    body = api.call("POST", "/v1/admin/replay", body=req)
    if args.json:
        print_json(body)
    else:
        print_line(f"replayed {body['replayed']}")
    return 0
