"""Sockets and time: listeners, one task group per connection, startup and shutdown."""
