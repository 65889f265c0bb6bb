"""Durable state: the narrow Store interface, its RocksDB implementation and the group-commit writer."""
