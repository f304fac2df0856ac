"""The `headwater` command line: init, run, show, sql, history, tables, maintain, demo."""

from .main import app, main

__all__ = ["app", "main"]
