"""Merge benchmark: Headwater's merge strategy against delta-rs MERGE (see bench/README.md)."""
