"""Operations on a whole database: backup, restore, verify, export (see README.md here)."""
