"""Credit notes: corrections that lower an issued invoice (see README.md)."""
