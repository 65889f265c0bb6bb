"""``amqpbroker ctl``: rabbitmqctl's everyday commands, through a running broker's management API.

    amqpbroker ctl [--url http://127.0.0.1:15672] [-u guest] [--password guest] [--formatter table|json]
                   COMMAND [-p VHOST] ARGS...

Lists print one row per object with the columns asked for (rabbitmqctl's names: ``list_queues
name messages consumers``), tab-separated under a header, or a JSON array with
``--formatter json``. Exit codes as rabbitmqctl's (sysexits): 0 done, 64 a usage error, 65 the
broker refused the request (400/404/409, the reason printed), 69 the broker cannot be reached,
77 the credentials were refused (401/403).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

__all__ = ["main"]

EX_OK, EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_NOPERM = 0, 64, 65, 69, 77

# command -> (API path with {vhost}, default columns, whether -p applies)
_LISTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "list_queues": ("/api/queues/{vhost}", ("name", "messages"), True),
    "list_exchanges": ("/api/exchanges/{vhost}", ("name", "type"), True),
    "list_bindings": ("/api/bindings/{vhost}", ("source", "destination", "destination_type", "routing_key"), True),
    "list_connections": ("/api/connections", ("name", "user", "peer_host", "peer_port", "state"), False),
    "list_channels": ("/api/channels", ("name", "user", "number", "consumer_count", "messages_unacknowledged"), False),
    "list_consumers": ("/api/consumers/{vhost}", ("queue.name", "channel_details.name", "consumer_tag", "ack_required",
                                                  "prefetch_count"), True),
    "list_users": ("/api/users", ("name", "tags"), False),
    "list_vhosts": ("/api/vhosts", ("name",), False),
    "list_permissions": ("/api/vhosts/{vhost}/permissions", ("user", "configure", "write", "read"), True),
    "list_topic_permissions": ("/api/vhosts/{vhost}/topic-permissions", ("user", "exchange", "write", "read"), True),
    "list_policies": ("/api/policies/{vhost}", ("name", "pattern", "apply-to", "definition", "priority"), True),
    "list_operator_policies": ("/api/operator-policies/{vhost}", ("name", "pattern", "apply-to", "definition",
                                                                  "priority"), True),
    "list_vhost_limits": ("/api/vhost-limits/{vhost}", ("vhost", "value"), True),
    "list_user_limits": ("/api/user-limits", ("user", "value"), False),
    "list_parameters": ("/api/parameters", ("component", "name", "value"), False),  # (-p: filtered below)
    "list_global_parameters": ("/api/global-parameters", ("name", "value"), False),
}


class CtlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Api:
    def __init__(self, url: str, username: str, password: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, method=method, data=data)
        request.add_header("Authorization", self.auth)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read()).get("reason", error.reason)
            except ValueError:
                reason = error.reason
            code = EX_NOPERM if error.code in (401, 403) else EX_DATAERR
            raise CtlError(code, f"{method} {path}: {error.code} {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CtlError(EX_UNAVAILABLE, f"cannot reach the management API at {self.url}: "
                                           f"{getattr(exc, 'reason', exc)}") from None
        return json.loads(payload) if payload else None


def _field(item: dict[str, Any], column: str) -> Any:
    value: Any = item
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(each) for each in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], formatter: str) -> None:
    if formatter == "json":
        print(json.dumps([{column: _field(row, column) for column in columns} for row in rows], indent=1))
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_cell(_field(row, column)) for column in columns))


def _v(vhost: str) -> str:
    return quote(vhost, safe="")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqpbroker ctl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("AMQPBROKER_CTL_URL", "http://127.0.0.1:15672"),
                        help="the management API (env AMQPBROKER_CTL_URL; default http://127.0.0.1:15672)")
    parser.add_argument("-u", "--username", default=os.environ.get("AMQPBROKER_CTL_USER", "guest"))
    parser.add_argument("--password", default=os.environ.get("AMQPBROKER_CTL_PASSWORD", "guest"))
    parser.add_argument("--formatter", choices=("table", "json"), default="table")
    parser.add_argument("-p", "--vhost", default=None, help="the virtual host (default /)")
    parser.add_argument("--priority", type=int, default=0, help="set_policy, set_operator_policy (default 0)")
    parser.add_argument("--apply-to", default="all", help="set_policy, set_operator_policy: queues, "
                        "classic_queues, quorum_queues, streams, exchanges or all (default all)")
    parser.add_argument("command", help="a rabbitmqctl command: status, " + ", ".join(sorted(_LISTS)) +
                        ", add_user, delete_user, change_password, set_user_tags, add_vhost, delete_vhost, "
                        "set_permissions, clear_permissions, set_topic_permissions, clear_topic_permissions, "
                        "set_vhost_limits, clear_vhost_limits, set_user_limits, clear_user_limits, "
                        "set_parameter, clear_parameter, set_global_parameter, clear_global_parameter, "
                        "set_cluster_name, set_policy, "
                        "clear_policy, set_operator_policy, clear_operator_policy, purge_queue, "
                        "delete_queue, close_connection, export_definitions, import_definitions")
    parser.add_argument("args", nargs="*", help="the command's arguments (list_*: columns)")
    return parser


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise CtlError(EX_USAGE, f"{what} must be JSON, such as '{{\"max-connections\": 10}}' or '\"text\"'") from None


def _set_limits(api: Api, base: str, limits_json: str) -> None:
    limits = _json(limits_json, "limits")
    if not isinstance(limits, dict):
        raise CtlError(EX_USAGE, "limits must be a JSON object")
    for name, value in limits.items():
        api.call("PUT", f"{base}/{quote(name, safe='')}", {"value": value})


def run(api: Api, command: str, args: list[str], vhost: str, formatter: str, priority: int = 0,
        apply_to: str = "all") -> None:
    def need(count: int, usage: str) -> None:
        if len(args) != count:
            raise CtlError(EX_USAGE, f"usage: amqpbroker ctl {command} {usage}")

    if command in _LISTS:
        path, default_columns, per_vhost = _LISTS[command]
        rows = api.call("GET", path.format(vhost=_v(vhost)) if per_vhost else path) or []
        if command == "list_parameters":  # every component's, in the one vhost
            rows = [row for row in rows if row.get("vhost") == vhost]
        _print_rows(rows or [], tuple(args) or default_columns, formatter)
    elif command == "status":
        overview = api.call("GET", "/api/overview")
        node = (api.call("GET", "/api/nodes") or [{}])[0]
        status = {"product": overview.get("product_name"), "version": overview.get("product_version"),
                  "node": overview.get("node"), "listeners": overview.get("listeners"),
                  "object_totals": overview.get("object_totals"), "queue_totals": overview.get("queue_totals"),
                  "memory_used": node.get("mem_used"), "memory_limit": node.get("mem_limit"),
                  "alarms": [name for name in ("mem_alarm", "disk_free_alarm", "store_alarm") if node.get(name)]}
        if formatter == "json":
            print(json.dumps(status, indent=1))
        else:
            for key, value in status.items():
                print(f"{key}: {_cell(value)}")
    elif command == "add_user":
        need(2, "USER PASSWORD")
        api.call("PUT", f"/api/users/{_v(args[0])}", {"password": args[1], "tags": ""})
    elif command == "delete_user":
        need(1, "USER")
        api.call("DELETE", f"/api/users/{_v(args[0])}")
    elif command == "change_password":
        need(2, "USER PASSWORD")
        user = api.call("GET", f"/api/users/{_v(args[0])}")
        api.call("PUT", f"/api/users/{_v(args[0])}", {"password": args[1], "tags": user.get("tags", [])})
    elif command == "set_user_tags":
        if not args:
            raise CtlError(EX_USAGE, "usage: amqpbroker ctl set_user_tags USER [TAG...]")
        api.call("GET", f"/api/users/{_v(args[0])}")  # 404 for an unknown user, not a new one
        api.call("PUT", f"/api/users/{_v(args[0])}", {"tags": list(args[1:])})
    elif command == "add_vhost":
        need(1, "VHOST")
        api.call("PUT", f"/api/vhosts/{_v(args[0])}", {})
    elif command == "delete_vhost":
        need(1, "VHOST")
        api.call("DELETE", f"/api/vhosts/{_v(args[0])}")
    elif command == "set_permissions":
        need(4, "[-p VHOST] USER CONF WRITE READ")
        api.call("PUT", f"/api/permissions/{_v(vhost)}/{_v(args[0])}",
                 {"configure": args[1], "write": args[2], "read": args[3]})
    elif command == "clear_permissions":
        need(1, "[-p VHOST] USER")
        api.call("DELETE", f"/api/permissions/{_v(vhost)}/{_v(args[0])}")
    elif command == "set_topic_permissions":
        need(4, "[-p VHOST] USER EXCHANGE WRITE READ")
        api.call("PUT", f"/api/topic-permissions/{_v(vhost)}/{_v(args[0])}",
                 {"exchange": args[1], "write": args[2], "read": args[3]})
    elif command == "clear_topic_permissions":
        if len(args) not in (1, 2):
            raise CtlError(EX_USAGE, "usage: amqpbroker ctl clear_topic_permissions [-p VHOST] USER [EXCHANGE]")
        tail = f"/{_v(args[1])}" if len(args) == 2 else ""
        api.call("DELETE", f"/api/topic-permissions/{_v(vhost)}/{_v(args[0])}{tail}")
    elif command == "set_vhost_limits":  # the whole set, as rabbitmqctl (user limits merge, as there)
        need(1, "[-p VHOST] '{\"max-connections\": N, \"max-queues\": N}'")
        api.call("PUT", f"/api/parameters/vhost-limits/{_v(vhost)}/limits", {"value": _json(args[0], "limits")})
    elif command == "clear_vhost_limits":
        need(0, "[-p VHOST]")
        for limits in api.call("GET", f"/api/vhost-limits/{_v(vhost)}") or []:
            for name in limits.get("value", {}):
                api.call("DELETE", f"/api/vhost-limits/{_v(vhost)}/{_v(name)}")
    elif command == "set_user_limits":
        need(2, "USER '{\"max-connections\": N, \"max-channels\": N}'")
        _set_limits(api, f"/api/user-limits/{_v(args[0])}", args[1])
    elif command == "clear_user_limits":
        need(2, "USER LIMIT|all")
        names = [args[1]]
        if args[1] == "all":
            names = [name for limits in api.call("GET", f"/api/user-limits/{_v(args[0])}") or []
                     for name in limits.get("value", {})]
        for name in names:
            api.call("DELETE", f"/api/user-limits/{_v(args[0])}/{_v(name)}")
    elif command == "set_parameter":
        need(3, "[-p VHOST] COMPONENT NAME VALUE")
        api.call("PUT", f"/api/parameters/{_v(args[0])}/{_v(vhost)}/{_v(args[1])}", {"value": _json(args[2], "VALUE")})
    elif command == "clear_parameter":
        need(2, "[-p VHOST] COMPONENT NAME")
        api.call("DELETE", f"/api/parameters/{_v(args[0])}/{_v(vhost)}/{_v(args[1])}")
    elif command == "set_global_parameter":
        need(2, "NAME VALUE")
        api.call("PUT", f"/api/global-parameters/{_v(args[0])}", {"value": _json(args[1], "VALUE")})
    elif command == "clear_global_parameter":
        need(1, "NAME")
        api.call("DELETE", f"/api/global-parameters/{_v(args[0])}")
    elif command == "set_cluster_name":
        need(1, "NAME")
        api.call("PUT", "/api/cluster-name", {"name": args[0]})
    elif command in ("set_policy", "set_operator_policy"):
        need(3, "[-p VHOST] [--priority N] [--apply-to KIND] NAME PATTERN DEFINITION")
        try:
            definition = json.loads(args[2])
        except ValueError:
            raise CtlError(EX_USAGE, "the definition must be JSON, such as '{\"max-length\": 1000}'") from None
        kind = "operator-policies" if command == "set_operator_policy" else "policies"
        api.call("PUT", f"/api/{kind}/{_v(vhost)}/{_v(args[0])}",
                 {"pattern": args[1], "definition": definition, "priority": priority, "apply-to": apply_to})
    elif command in ("clear_policy", "clear_operator_policy"):
        need(1, "[-p VHOST] NAME")
        kind = "operator-policies" if command == "clear_operator_policy" else "policies"
        api.call("DELETE", f"/api/{kind}/{_v(vhost)}/{_v(args[0])}")
    elif command == "purge_queue":
        need(1, "[-p VHOST] QUEUE")
        api.call("DELETE", f"/api/queues/{_v(vhost)}/{_v(args[0])}/contents")
    elif command == "delete_queue":
        need(1, "[-p VHOST] QUEUE")
        api.call("DELETE", f"/api/queues/{_v(vhost)}/{_v(args[0])}")
    elif command == "close_connection":
        need(2, "CONNECTION_NAME REASON")
        _close_with_reason(api, f"/api/connections/{_v(args[0])}", args[1])
    elif command == "export_definitions":
        need(1, "FILE (- for standard output)")
        definitions = api.call("GET", "/api/definitions")
        text = json.dumps(definitions, indent=1)
        if args[0] == "-":
            print(text)
        else:
            with open(args[0], "w", encoding="utf-8") as file:
                file.write(text)
    elif command == "import_definitions":
        need(1, "FILE")
        try:
            with open(args[0], encoding="utf-8") as file:
                definitions = json.load(file)
        except (OSError, ValueError) as exc:
            raise CtlError(EX_DATAERR, f"cannot read {args[0]}: {exc}") from None
        api.call("POST", "/api/definitions", definitions)
    else:
        raise CtlError(EX_USAGE, f"unknown command '{command}' (amqpbroker ctl --help lists them)")


def _close_with_reason(api: Api, path: str, reason: str) -> None:
    request = urllib.request.Request(api.url + path, method="DELETE")
    request.add_header("Authorization", api.auth)
    request.add_header("X-Reason", reason)
    try:
        with urllib.request.urlopen(request, timeout=api.timeout):
            pass
    except urllib.error.HTTPError as error:
        raise CtlError(EX_NOPERM if error.code in (401, 403) else EX_DATAERR,
                       f"DELETE {path}: {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CtlError(EX_UNAVAILABLE, f"cannot reach the management API at {api.url}: {exc}") from None


def main(argv: list[str]) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_intermixed_args(argv)  # (-p VHOST may come after the command, as rabbitmqctl's)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    api = Api(args.url, args.username, args.password)
    try:
        run(api, args.command, args.args, args.vhost or "/", args.formatter, args.priority, args.apply_to)
    except CtlError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return exc.code
    return EX_OK
