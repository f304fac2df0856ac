"""Ingest benchmark: PostgreSQL into a bronze Delta table, Headwater vs dlt vs a bare COPY."""
