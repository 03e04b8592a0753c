"""Event ingestion: validation, deduplication and group commit into the store."""
