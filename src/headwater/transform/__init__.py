"""Transforms and the table graph."""
