"""walkit's version (one place; the package, the WAL, snapshots and bundles record it)."""

__version__ = "0.1.0"
