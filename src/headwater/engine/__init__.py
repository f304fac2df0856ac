"""The commit protocol and the run of a table: read position, pull, write, commit, acknowledge."""
