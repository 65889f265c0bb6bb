"""The ``amqpbroker`` command: parse flags, build the Config, serve."""

from __future__ import annotations

import argparse
import logging
import sys

from amqpbroker import __version__
from amqpbroker.config import load_config

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amqpbroker",
        description="A RabbitMQ-compatible AMQP 0-9-1 message broker. Settings come from defaults, "
                    "then --config FILE (TOML), then AMQPBROKER_* environment variables, then flags. "
                    "'amqpbroker diagnostics ping' checks a running broker; 'amqpbroker ctl COMMAND' "
                    "manages one (rabbitmqctl's commands, see 'amqpbroker ctl --help').")
    parser.add_argument("--version", action="version", version=f"amqpbroker {__version__}")
    parser.add_argument("--config", metavar="FILE", help="a TOML file with any of the settings below")
    parser.add_argument("--host", help="address to listen on (env AMQPBROKER_HOST; default: every "
                                       "interface, IPv4 and IPv6)")
    parser.add_argument("--port", type=int, help="AMQP port (env AMQPBROKER_PORT; default 5672)")
    parser.add_argument("--data-dir", help="where durable state is kept (env AMQPBROKER_DATA_DIR; "
                                           "default $XDG_DATA_HOME/amqpbroker, i.e. "
                                           "~/.local/share/amqpbroker)")
    parser.add_argument("--heartbeat", type=int, help="heartbeat interval offered to clients, seconds "
                                                      "(env AMQPBROKER_HEARTBEAT; default 60; 0 disables)")
    parser.add_argument("--prometheus-port", type=int, help="port of the Prometheus /metrics endpoint "
                                                          "(env AMQPBROKER_PROMETHEUS_PORT; default 15692; 0: off)")
    parser.add_argument("--management-port", type=int, help="port of the management HTTP API "
                                                          "(env AMQPBROKER_MANAGEMENT_PORT; default 15672 on "
                                                          "127.0.0.1; 0: off)")
    parser.add_argument("--prometheus-host", help="address /metrics listens on (env AMQPBROKER_PROMETHEUS_HOST; "
                                                  "default: every interface)")
    parser.add_argument("--management-host", help="address the management API listens on (env "
                                                  "AMQPBROKER_MANAGEMENT_HOST; default 127.0.0.1)")
    parser.add_argument("--compatibility", help="whose rules apply where RabbitMQ 3.x and 4.x differ: 3.13, "
                        "4.0 or 4.3 (env AMQPBROKER_COMPATIBILITY; default 4.0; docs/compatibility.md)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (env AMQPBROKER_LOG_LEVEL; default info)")
    return parser


def diagnostics(argv: list[str]) -> int:
    """``amqpbroker diagnostics ping [--host H] [--port N]``: exit 0 if a broker answers there."""
    parser = argparse.ArgumentParser(prog="amqpbroker diagnostics",
                                     description="Check a running broker (as rabbitmq-diagnostics).")
    parser.add_argument("command", choices=["ping"], help="ping: does a broker answer AMQP there?")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, help="default: AMQPBROKER_PORT or 5672")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args(argv)
    from amqpbroker.diagnostics import ping
    port = args.port if args.port is not None else load_config().port
    problem = ping(args.host, port, args.timeout)
    if problem is not None:
        print(f"Error: {problem}", file=sys.stderr)
        return 1
    print(f"Ping succeeded: an AMQP broker answers on {args.host}:{port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diagnostics"]:
        return diagnostics(argv[1:])
    if argv[:1] == ["ctl"]:  # rabbitmqctl's commands, through the management API
        from amqpbroker.ctl import main as ctl_main
        return ctl_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir,
                             heartbeat=args.heartbeat, log_level=args.log_level,
                             prometheus_port=args.prometheus_port, management_port=args.management_port,
                             prometheus_host=args.prometheus_host, management_host=args.management_host,
                             compatibility=args.compatibility)
    except (OSError, ValueError) as exc:
        print(f"amqpbroker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    from amqpbroker.server.lifecycle import run
    return run(config)
