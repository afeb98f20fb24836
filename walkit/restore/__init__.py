"""Point-in-time restore from local state: snapshots, the (pure) plan, replay, collection metadata."""
