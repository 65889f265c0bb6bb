"""The broker's domain: virtual hosts, exchanges, queues, consumers. Synchronous, in memory, sans-IO."""
