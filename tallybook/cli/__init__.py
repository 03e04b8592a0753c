"""The `tallybook` command line."""
