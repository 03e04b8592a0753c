"""Background jobs: period close, usage reports and webhook delivery, and their scheduler."""
