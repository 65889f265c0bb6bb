"""Sans-IO AMQP state machines: bytes in, calls to a handler and bytes out; no sockets, no clock."""
