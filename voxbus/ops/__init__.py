"""Operating voxbus: embedded and clustered NATS, provisioning, permissions and purge."""
