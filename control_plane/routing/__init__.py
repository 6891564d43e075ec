"""Where a request goes and whether it may start: routing, affinity, load, admission."""
