"""`orchestrator tenants ...`: tenants and their API keys, over the admin API."""

from __future__ import annotations

import argparse
from typing import Any

from .admin import (
    Client,
    command,
    common_options,
    print_fields,
    print_json,
    print_line,
    print_table,
    segment,
    usage,
    when,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = common_options()
    p = sub.add_parser("tenants", help="list, create and change tenants; list and revoke their keys")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("list", parents=[common], help="every tenant")
    a.set_defaults(func=command(list_tenants))

    a = actions.add_parser("create", parents=[common], help="create a tenant and its first API key (shown once)")
    a.add_argument("tenant_id")
    a.add_argument("--name", default="")
    a.add_argument("--weight", type=int, default=1, help="its share of shared workers (default 1)")
    a.add_argument("--max-inflight", type=int, help="the most of its jobs running at once (default: no cap)")
    a.set_defaults(func=command(create))

    a = actions.add_parser("update", parents=[common], help="change a tenant's name, weight, cap or standing")
    a.add_argument("tenant_id")
    a.add_argument("--name")
    a.add_argument("--weight", type=int)
    a.add_argument("--max-inflight", metavar="N|none", help="a cap on its running jobs; none removes it")
    standing = a.add_mutually_exclusive_group()
    standing.add_argument("--disabled", dest="disabled", action="store_const", const=True, help="refuse its keys")
    standing.add_argument("--enabled", dest="disabled", action="store_const", const=False, help="accept its keys again")
    a.set_defaults(func=command(update))

    a = actions.add_parser("disable", parents=[common], help="refuse a tenant's keys until it is enabled again")
    a.add_argument("tenant_id")
    a.set_defaults(func=command(disable))

    a = actions.add_parser("delete", parents=[common], help="delete a tenant and everything of it")
    a.add_argument("tenant_id")
    a.add_argument("--force", action="store_true", help="even while some of its jobs are running")
    a.set_defaults(func=command(delete))

    a = actions.add_parser("keys", parents=[common], help="a tenant's API keys (ids and dates, never secrets)")
    a.add_argument("tenant_id")
    a.set_defaults(func=command(keys))

    a = actions.add_parser("create-key", parents=[common], help="another API key for a tenant (shown once)")
    a.add_argument("tenant_id")
    a.set_defaults(func=command(create_key))

    a = actions.add_parser("revoke-key", parents=[common], help="revoke a key at once (its id, or the whole key)")
    a.add_argument("key")
    a.set_defaults(func=command(revoke_key))


_COLUMNS = ("id", "name", "weight", "max inflight", "disabled", "created")


def _row(t: dict[str, Any]) -> tuple[object, ...]:
    return (t["id"], t["name"] or "-", t["weight"], t["max_inflight"], t["disabled"], when(t["created_at"]))


def _show(args: argparse.Namespace, tenant: dict[str, Any]) -> int:
    if args.json:
        print_json(tenant)
    else:
        print_fields(zip(_COLUMNS, _row(tenant), strict=True))
    return 0


def list_tenants(args: argparse.Namespace, api: Client) -> int:
    body = api.call("GET", "/v1/admin/tenants")
    if args.json:
        print_json(body)
    else:
        print_table(_COLUMNS, (_row(t) for t in body["tenants"]), empty="no tenants")
    return 0


def create(args: argparse.Namespace, api: Client) -> int:
    req = {"id": args.tenant_id, "name": args.name, "weight": args.weight, "max_inflight": args.max_inflight}
    body = api.call("POST", "/v1/admin/tenants", body=req)
    if args.json:
        print_json(body)
    else:
        _show(args, body["tenant"])
        print_line(f"api key (shown once): {body['api_key']}")
    return 0


def _patch(args: argparse.Namespace, api: Client, req: dict[str, Any]) -> int:
    return _show(args, api.call("PATCH", f"/v1/admin/tenants/{segment(args.tenant_id)}", body=req))


def update(args: argparse.Namespace, api: Client) -> int:
    req: dict[str, Any] = {}
    if args.name is not None:
        req["name"] = args.name
    if args.weight is not None:
        req["weight"] = args.weight
    if args.max_inflight is not None:
        if args.max_inflight.lower() == "none":
            req["max_inflight"] = None
        elif args.max_inflight.isdigit():
            req["max_inflight"] = int(args.max_inflight)
        else:
            raise usage(f"--max-inflight takes a whole number or none, not {args.max_inflight!r}")
    if args.disabled is not None:
        req["disabled"] = args.disabled
    if not req:
        raise usage("nothing to change: give --name, --weight, --max-inflight, --disabled or --enabled")
    return _patch(args, api, req)


def disable(args: argparse.Namespace, api: Client) -> int:
    return _patch(args, api, {"disabled": True})


def delete(args: argparse.Namespace, api: Client) -> int:
    query = {"force": True} if args.force else None
    body = api.call("DELETE", f"/v1/admin/tenants/{segment(args.tenant_id)}", query=query)
    if args.json:
        print_json(body)
    else:
        print_fields((k.replace("_", " "), v) for k, v in body.items())
    return 0


def keys(args: argparse.Namespace, api: Client) -> int:
    body = api.call("GET", f"/v1/admin/tenants/{segment(args.tenant_id)}/keys")
    if args.json:
        print_json(body)
    else:
        rows = ((k["key_id"], when(k["created_at"]), when(k["revoked_at"])) for k in body["keys"])
        print_table(("key id", "created", "revoked"), rows, empty="no keys")
    return 0


def create_key(args: argparse.Namespace, api: Client) -> int:
    body = api.call("POST", f"/v1/admin/tenants/{segment(args.tenant_id)}/keys")
    if args.json:
        print_json(body)
    else:
        print_line(f"api key (shown once): {body['api_key']}")
    return 0


def revoke_key(args: argparse.Namespace, api: Client) -> int:
    key_id = args.key.partition(".")[0]  # never send the secret
    api.call("DELETE", f"/v1/admin/keys/{segment(key_id)}")
    if args.json:
        print_json({"key_id": key_id, "revoked": True})
    else:
        print_line(f"revoked {key_id}")
    return 0
