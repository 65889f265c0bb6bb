"""``amqpbroker diagnostics ping``: is a broker answering AMQP there? (as ``rabbitmq-diagnostics
ping``; container health checks use it)."""

from __future__ import annotations

import socket
import struct

from pamqp.header import ProtocolHeader

__all__ = ["ping"]

_CONNECTION_START = struct.pack(">BH", 1, 0)  # a method frame on channel 0...
_START_IDS = struct.pack(">HH", 10, 10)  # ...carrying connection.start


def ping(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None if the broker at ``host:port`` answers the protocol header with ``connection.start``,
    else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(ProtocolHeader().marshal())
            data = b""
            while len(data) < 11:
                chunk = sock.recv(4096)
                if not chunk:
                    return "the connection was closed before connection.start"
                data += chunk
    except OSError as exc:
        return f"cannot reach {host}:{port}: {exc}"
    if data[:3] != _CONNECTION_START or data[7:11] != _START_IDS:
        return f"{host}:{port} did not answer like an AMQP 0-9-1 broker"
    return None
