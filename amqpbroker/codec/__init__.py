"""Stateless bytes <-> objects: frame splitting, method decoding, delivery encoding."""
