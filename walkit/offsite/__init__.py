"""The daily call: bundles, the quota ledger, upload, the off-site chain and restore, retention, status."""
