"""The shared stage runtime: bus connection, worker loop, lanes, leases, tracing and logging."""
