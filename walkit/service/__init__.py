"""The long-running worker, its configuration, HTTP API and logs."""
