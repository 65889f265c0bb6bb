"""HTTP endpoints (ASGI, Starlette): read-only views over the broker, served on the broker's own
event loop by ``amqpbroker.server.http``."""
